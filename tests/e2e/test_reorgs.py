"""Reorgs that drop mined commits and reveals: the nodes send them again, each lands
once, and the request still reaches its honest outcome."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import Network
from tests.e2e.test_network import PROMPT

pytestmark = pytest.mark.slow


def _events(network: Network, name: str, request_id: int, from_block: int) -> list[Any]:
    event = getattr(network.coordinator().events, name)()
    return list(event.get_logs(from_block=from_block, argument_filters={"requestId": request_id}))


def _reorg_when_dropping(
    network: Network, name: str, depth: int, request_id: int, start: int
) -> int:
    """Wait for a ``name`` event in the newest ``depth`` blocks (and the request below
    them), then replace those blocks with empty ones; returns how many events it dropped."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        head = network.w3.eth.block_number
        first_replaced = head - depth + 1
        logs = _events(network, name, request_id, start)
        dropped = [log for log in logs if log["blockNumber"] >= first_replaced]
        if dropped and start < first_replaced:
            network.anvil.rpc("anvil_reorg", depth, [])
            return len(dropped)
        time.sleep(0.2)
    raise AssertionError(f"no {name} event to drop")


@pytest.mark.parametrize(("phase", "depth"), [("Committed", 2), ("Revealed", 3)])
def test_mined_commits_and_reveals_dropped_by_a_reorg_are_sent_again_once(
    network: Network, phase: str, depth: int
) -> None:
    network.start(3)
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=3, fee_wei=3 * 10**15, max_time_ms=40_000, wait=False)
    (requested,) = _events(network, "InferenceRequested", result.request_id, 0)
    start = int(requested["blockNumber"])

    dropped = _reorg_when_dropping(network, phase, depth, result.request_id, start)
    assert dropped >= 1
    assert len(_events(network, phase, result.request_id, start)) < 3  # they are gone

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if _events(network, "InferenceFinalized", result.request_id, start):
            break
        assert not _events(network, "InferenceFailed", result.request_id, start)
        time.sleep(1)
    else:
        raise AssertionError("no outcome after the reorg")

    for node in network.local.nodes.values():
        calls = network.calls_to_coordinator(node.address, start)
        landed = [name for name, succeeded in calls if succeeded]
        assert landed.count("commit") == 1, calls
        assert landed.count("reveal") == 1, calls
        # A reveal still in the pool when the reorg dropped its commit is mined right
        # behind the commit sent again, before the other nodes' commits are back, and
        # reverts as too early; the node sends it once more. No other commit or reveal
        # fails (nodes that race to finalize in one block are not judged here).
        failed = [name for name, succeeded in calls if not succeeded and name != "finalize"]
        assert failed in ([], ["reveal"]), calls
    assert len(_events(network, "Committed", result.request_id, start)) == 3
    assert len(_events(network, "Revealed", result.request_id, start)) == 3
