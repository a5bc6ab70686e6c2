"""A part of the node that fails is started again; only what cannot heal stops the node."""

from __future__ import annotations

import asyncio

import pytest

from oracle import node
from oracle.errors import RpcUnavailable, SenderAlreadyRunning
from oracle.observability import Readiness


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "PART_RESTART_S", 0.01)


def test_a_failing_part_is_restarted_until_it_runs(caplog: pytest.LogCaptureFixture) -> None:
    readiness = Readiness()
    starts: list[int] = []
    seen_restarting: list[set[str]] = []

    async def listener() -> None:
        starts.append(len(starts))
        seen_restarting.append(set(readiness.restarting))
        if len(starts) == 1:
            raise ValueError("a log nobody expected")
        if len(starts) == 2:
            raise RpcUnavailable(method="eth_getLogs", reason="reset")

    async def scenario() -> None:
        await node.supervised("listener", listener, asyncio.Event(), readiness)

    asyncio.run(scenario())
    assert len(starts) == 3
    assert seen_restarting == [set(), set(), set()]  # cleared before each new start
    failures = [r for r in caplog.records if r.getMessage().startswith("a part of the node")]
    assert [getattr(r, "failures", None) for r in failures] == [1, 2]


def test_health_says_which_part_waits_to_restart() -> None:
    readiness = Readiness()
    stop = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        task = asyncio.create_task(node.supervised("sender", broken, stop, readiness))
        for _ in range(100):
            await asyncio.sleep(0.001)
            if readiness.restarting:
                break
        assert readiness.restarting == {"sender"}
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())


def test_what_cannot_heal_stops_the_node() -> None:
    async def second_sender() -> None:
        raise SenderAlreadyRunning(address="0x" + "11" * 20)

    with pytest.raises(SenderAlreadyRunning):
        asyncio.run(node.supervised("sender", second_sender, asyncio.Event(), Readiness()))
