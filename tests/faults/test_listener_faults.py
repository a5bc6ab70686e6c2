"""The listener behind the fault-injecting proxy, on a real anvil and Postgres.

Each test is one of the RPC findings of the fault-injection issue: what a public endpoint
does (cut answers, HTML pages, rate limits, lagging backends, refused log ranges) must
neither stop the listener's run loop nor be taken for something it is not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.listener import Listener
from oracle.store.models import ChainCheckpoint, ChainEvent, Request
from tests.faults.conftest import attempt, make_listener, node_web3, request_ids, run_until
from tests.support.protocol import Protocol
from tests.support.rpc_proxy import Call, FaultKind, RpcProxy

UNMAPPED: list[FaultKind] = ["reset_mid_body", "html", "malformed"]
"""Failures outside the errors the node translates today."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What the listener wrote: event rows, request rows, the checkpoint."""

    events: list[tuple[int, int, int]]
    requests: list[tuple[int, str, datetime]]
    checkpoint: int | None


def stored(sessions: sessionmaker[Session]) -> Stored:
    with sessions() as session:
        events = session.execute(
            select(ChainEvent.id, ChainEvent.block_number, ChainEvent.log_index).order_by(
                ChainEvent.id
            )
        )
        requests = session.execute(
            select(Request.id, Request.phase, Request.created_at).order_by(Request.id)
        )
        checkpoint = session.scalar(select(ChainCheckpoint.block_number))
        return Stored(
            events=[tuple(row) for row in events],  # type: ignore[misc]
            requests=[tuple(row) for row in requests],  # type: ignore[misc]
            checkpoint=checkpoint,
        )


@pytest.fixture
def registered(protocol: Protocol) -> Protocol:
    protocol.register_oracles(1)
    return protocol


def run_listener(listener: Listener, done: Any) -> None:
    asyncio.run(run_until(lambda stop: listener.run(stop, poll_interval=0.02), done))


@pytest.mark.parametrize("kind", [*UNMAPPED, "drop", "server_error", "rpc_rate_limit"])
def test_the_run_loop_outlives_a_faulty_endpoint(
    kind: FaultKind,
    chain: Anvil,
    registered: Protocol,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    request_id = registered.request(quorum=1)
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    proxy.inject(kind, times=3)

    run_listener(listener, lambda: request_ids(sessions) == [request_id])

    assert proxy.injected[kind] == 3


def test_a_lagging_backend_is_not_taken_for_a_reorg(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    registered.request(quorum=1)
    chain.rpc("evm_mine")
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    listener.poll_once()
    before = stored(sessions)
    assert before.requests and before.checkpoint == chain.w3.eth.block_number

    lag = proxy.lag(3)  # the head goes back 3 blocks, the request's block is not found
    for _ in range(3):
        attempt(listener.poll_once)
        assert stored(sessions) == before  # nothing rolled back, nothing read again
    assert proxy.injected["lag"] > 0

    lag.cancel()
    chain.rpc("evm_mine")
    listener.poll_once()
    after = stored(sessions)
    assert (after.events, after.requests) == (before.events, before.requests)
    assert after.checkpoint == chain.w3.eth.block_number


def test_a_flapping_load_balancer_is_not_taken_for_a_reorg_and_loses_nothing(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    """Behind a load balancer, every other answer may come from a backend a block or two
    behind: the head and the blocks seem to come and go."""
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    flapping = proxy.inject("lag", probability=0.5, blocks=2)
    earlier = stored(sessions)
    for n in range(12):
        registered.request(quorum=1, prompt=f"request {n}")  # always in the newest block
        attempt(listener.poll_once)
        now = stored(sessions)
        assert set(earlier.events) <= set(now.events)  # none deleted and read again
        assert set(earlier.requests) <= set(now.requests)
        assert (now.checkpoint or 0) >= (earlier.checkpoint or 0)
        earlier = now
    assert proxy.injected["lag"] > 0
    flapping.cancel()
    chain.rpc("evm_mine")
    listener.poll_once()
    assert len(stored(sessions).requests) == 12  # no log read from a lagging backend is lost


@pytest.mark.parametrize("failure", ["http_500", "http_503", "http_413", "http_400", "timeout"])
def test_log_ranges_shrink_on_any_failure(
    failure: str,
    chain: Anvil,
    registered: Protocol,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """An endpoint that fails wide eth_getLogs ranges without saying why (a timeout, a bare
    HTTP status) must see narrower ranges, not the same range again on every poll."""
    expected = []
    for gap in (0, 37, 120, 3, 150):
        chain.rpc("anvil_mine", hex(gap))
        expected.append(registered.request(quorum=1, prompt=f"after {gap} empty blocks"))

    def too_wide(call: Call) -> bool:
        return (call.block_span() or 0) > 40

    if failure == "timeout":
        proxy.inject("delay", methods=["eth_getLogs"], when=too_wide, delay_s=1.5)
        w3 = node_web3(proxy.url, timeout_s=0.5)
    else:
        status = int(failure.removeprefix("http_"))
        proxy.inject("server_error", status=status, methods=["eth_getLogs"], when=too_wide)
        w3 = node_web3(proxy.url)
    listener = make_listener(w3, sessions, registered)

    for _ in range(8):  # halving 500 blocks down to 40 takes four failures
        attempt(listener.poll_once)
        if request_ids(sessions) == expected:
            break
    assert request_ids(sessions) == expected


def test_retry_after_is_waited_out(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    request_id = registered.request(quorum=1)
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    proxy.inject("rate_limit", retry_after_s=2, times=1)

    run_listener(listener, lambda: request_ids(sessions) == [request_id])

    limited, following = proxy.calls[0], proxy.calls[1]
    assert limited.faults == ("rate_limit",)
    assert following.at - limited.at >= 2.0, "asked again before Retry-After had passed"


def test_a_reorg_between_logs_and_headers_loses_no_event(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    """The logs of a range are read, then the chain reorganises before the headers are:
    the new fork's events must be read, not skipped under a checkpoint that moved on."""
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    listener.poll_once()
    chain.rpc("anvil_mine", "0x3")  # empty blocks: their logs are read as "none"
    call = registered.request_call(quorum=1, prompt="arrived on the new fork")
    tx = call.build_transaction({"from": registered.requester, "value": 10**15})
    new_fork_tx = {k: _quantity(tx[k]) for k in ("from", "to", "data", "value", "gas")}  # type: ignore[literal-required]

    def reorganise(_call: Call) -> None:
        chain.rpc("anvil_reorg", 2, [[new_fork_tx, 0]])

    proxy.after("eth_getLogs", reorganise)
    for _ in range(3):
        attempt(listener.poll_once)
    (event,) = registered.coordinator.events.InferenceRequested().get_logs(from_block=0)
    assert request_ids(sessions) == [int(event["args"]["requestId"])]


def test_duplicated_and_reordered_batch_answers_are_matched_by_id(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    expected = [registered.request(quorum=1, prompt=f"request {n}") for n in range(4)]
    proxy.inject("duplicate")  # every batch answer carries one answer twice
    proxy.inject("reorder")
    listener = make_listener(node_web3(proxy.url), sessions, registered)

    run_listener(listener, lambda: request_ids(sessions) == expected)

    assert proxy.injected["duplicate"] > 0 and proxy.injected["reorder"] > 0
    with sessions() as session:
        checkpoint = session.get_one(ChainCheckpoint, "coordinator")
        canonical = chain.w3.eth.get_block(checkpoint.block_number)["hash"]
        assert checkpoint.block_hash == bytes(canonical)


def _quantity(value: Any) -> Any:
    return hex(value) if isinstance(value, int) else value


def test_a_poll_at_the_head_asks_the_head_and_only_what_a_new_block_needs(
    chain: Anvil, registered: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    """A node polls twice a second whatever the chain does: a poll with nothing new is
    one call (the head's header vouches for the checkpoint), and a new block three (the
    head, its logs, its header again to see it did not change meanwhile); each of those
    used to cost two more."""
    listener = make_listener(node_web3(proxy.url), sessions, registered)
    listener.poll_once()
    proxy.calls.clear()
    for _ in range(3):
        listener.poll_once()
    assert [r.methods for r in proxy.calls] == [("eth_getBlockByNumber",)] * 3

    proxy.calls.clear()
    request_id = registered.request(quorum=1)  # a block with an event
    listener.poll_once()
    assert request_ids(sessions) == [request_id]
    assert [r.methods for r in proxy.calls] == [
        ("eth_getBlockByNumber",),
        ("eth_getLogs",),
        ("eth_getBlockByNumber",),
    ]
