"""The transaction sender behind the fault-injecting proxy, on a real anvil and Postgres.

Each test is one of the RPC findings of the fault-injection issue: a faulty endpoint must
neither stop the sender's run loop, nor fail a transaction for good, nor be asked again
before the time it named; and whatever it does, each transaction lands once.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hexbytes import HexBytes
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.sender import TxSender
from oracle.errors import RpcRateLimited
from oracle.store.models import OutgoingTx
from tests.faults.conftest import (
    Outbox,
    attempt,
    make_listener,
    make_sender,
    node_web3,
    run_until,
)
from tests.support.protocol import Protocol
from tests.support.rpc_proxy import FaultKind, RpcProxy

UNMAPPED: list[FaultKind] = ["reset_mid_body", "html", "malformed"]
"""Failures outside the errors the node translates today."""


@pytest.fixture
def binding(chain: Anvil, protocol: Protocol) -> CoordinatorBinding:
    protocol.register_oracles(1)
    return CoordinatorBinding(chain.w3, protocol.coordinator.address)


def statuses(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.scalars(select(OutgoingTx).order_by(OutgoingTx.id))
        return [(row.kind, row.status) for row in rows]


def nonce_of(chain: Anvil, address: str) -> int:
    return chain.w3.eth.get_transaction_count(Web3.to_checksum_address(address), "latest")


def run_sender(sender: TxSender, sessions: sessionmaker[Session]) -> None:
    def settled() -> bool:
        return all(status not in ("pending", "sent") for _kind, status in statuses(sessions))

    asyncio.run(run_until(lambda stop: sender.run(stop, poll_interval=0.05), settled))


@pytest.mark.parametrize("kind", [*UNMAPPED, "drop", "server_error", "delay"])
def test_the_run_loop_outlives_a_faulty_endpoint_and_sends_each_transaction_once(
    kind: FaultKind,
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    sender = make_sender(node_web3(proxy.url, timeout_s=2), chain, sessions)
    first_nonce = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    proxy.inject(kind, times=4, delay_s=3)  # a delay past the client's timeout

    run_sender(sender, sessions)

    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]
    assert nonce_of(chain, sender.address) == first_nonce + 2
    assert proxy.injected[kind] == 4


@pytest.mark.parametrize("kind", ["drop", "reset_mid_body"])
def test_a_broadcast_whose_answer_is_lost_lands_once(
    kind: FaultKind,
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """The endpoint takes the transaction and the answer is lost on the way back."""
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    first_nonce = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    proxy.inject(kind, methods=["eth_sendRawTransaction"], times=2)

    run_sender(sender, sessions)

    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]
    assert nonce_of(chain, sender.address) == first_nonce + 2
    seat, _hash = protocol.coordinator.functions.getSeat(request_id, 0).call()
    assert seat[3] is True  # revealed


def test_a_rate_limit_error_with_data_is_not_a_revert(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """Infura-style ``{"code": -32005, "message": "limit exceeded", "data": {...}}`` on the
    reveal's simulation says "slow down", not "this call reverts"."""
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    sender.sync_once()
    assert outbox.row("commit", request_id).status == "confirmed"

    limited = proxy.inject("rpc_rate_limit", methods=["eth_call", "eth_estimateGas"], times=1)
    attempt(sender.sync_once)
    assert proxy.injected["rpc_rate_limit"] == 1
    assert outbox.row("reveal", request_id).status != "failed"

    limited.cancel()
    for _ in range(3):
        attempt(sender.sync_once)
    assert outbox.row("reveal", request_id).status == "confirmed"
    seat, _hash = protocol.coordinator.functions.getSeat(request_id, 0).call()
    assert seat[3] is True  # revealed


def test_a_revert_that_does_not_decode_is_asked_again_not_taken_for_a_verdict(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """An endpoint answers the simulations with revert data no contract could have sent
    (``Error(string)`` cut after its selector): the run loop goes on, and the transactions
    are neither failed on that word nor sent twice."""
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    first_nonce = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    proxy.inject("bad_revert", methods=["eth_call", "eth_estimateGas"], times=4)

    run_sender(sender, sessions)

    assert proxy.injected["bad_revert"] == 4
    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]
    assert nonce_of(chain, sender.address) == first_nonce + 2


def test_retry_after_is_waited_out(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    proxy.inject("rate_limit", retry_after_s=2, times=1)

    run_sender(sender, sessions)

    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]
    limited, following = proxy.calls[0], proxy.calls[1]
    assert limited.faults == ("rate_limit",)
    assert following.at - limited.at >= 2.0, "asked again before Retry-After had passed"


@pytest.mark.parametrize("lost_after_s", [0.0, 60.0])
def test_a_receipt_hidden_by_a_lagging_backend_does_not_unsettle_a_mined_transaction(
    lost_after_s: float,
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """A backend two blocks behind answers "no receipt" for what the last blocks mined.

    With no grace (0 s) that one answer sends the rows back to ``sent``, as if a reorg had
    dropped them; with the node's grace they stay settled and nothing is sent again.
    """
    sender = make_sender(node_web3(proxy.url), chain, sessions, lost_after_s=lost_after_s)
    first_nonce = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    run_sender(sender, sessions)
    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]

    lagging = proxy.lag(3)  # both transactions sit in the last two blocks
    sender.recheck_soon()
    for _ in range(3):
        sender.sync_once()
        sender.recheck_soon()
    assert proxy.injected["lag"] > 0
    if lost_after_s == 0:
        assert [status for _kind, status in statuses(sessions)] == ["sent", "sent"]
    else:
        assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]

    lagging.cancel()
    run_sender(sender, sessions)
    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]
    assert nonce_of(chain, sender.address) == first_nonce + 2


def test_a_nonce_hole_is_filled_while_every_sync_meets_a_rate_limit(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """A nonce released under transactions already sent stalls them all. The filler goes
    before the rows' own checks, so an endpoint that rate-limits those checks on every
    sync cannot starve it (it once held a soak's reveals back past their deadline)."""
    sender = make_sender(node_web3(proxy.url), chain, sessions, lost_after_s=0)
    before = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(binding, request_id)
    sender._next_nonce = before + 1  # the nonce below went to a row that was released
    proxy.inject("rate_limit", methods=["eth_getTransactionReceipt"], retry_after_s=0.1)

    with pytest.raises(RpcRateLimited):
        sender.sync_once()

    assert nonce_of(chain, sender.address) == before + 2  # the filler, then the commit
    assert proxy.injected["rate_limit"] >= 1


def test_rows_prepared_before_a_rate_limit_are_broadcast(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """A rate limit met while simulating the second row ends the pass; the first row,
    already signed and stored as sent, still goes out in that pass."""
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    before = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    for request_id in (protocol.request(quorum=1), protocol.request(quorum=1)):
        outbox.commit(binding, request_id)
    estimates = itertools.count(1)
    proxy.inject("rate_limit", methods=["eth_estimateGas"], when=lambda _: next(estimates) == 2)

    with pytest.raises(RpcRateLimited):
        sender.sync_once()

    assert proxy.injected["rate_limit"] == 1
    assert nonce_of(chain, sender.address) == before + 1  # mined (automine): it was sent
    assert statuses(sessions) == [("commit", "sent"), ("commit", "pending")]


def test_a_rate_limited_broadcast_goes_again_on_the_next_check(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """A broadcast refused with a rate limit never reached a pool: it is not one whose
    answer was lost, so it does not wait ``lost_after_s`` before going again."""
    sender = make_sender(node_web3(proxy.url), chain, sessions, lost_after_s=600)
    before = nonce_of(chain, sender.address)
    outbox = Outbox(sessions, sender.address, binding.address)
    outbox.commit(binding, protocol.request(quorum=1))
    proxy.inject("rate_limit", methods=["eth_sendRawTransaction"], times=1, retry_after_s=1)

    sender.sync_once()  # prepared, stored as sent, refused
    time.sleep(1.1)  # the wait the endpoint asked for
    sender.sync_once()  # found unknown, sent again at once

    assert proxy.injected["rate_limit"] == 1
    assert nonce_of(chain, sender.address) == before + 1


def test_a_rate_limit_every_few_calls_does_not_keep_the_last_rows_unchecked(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """Five commits in flight, the last one lost before it reached the chain, and an
    endpoint that rate-limits every fourth lookup: each pass checks two rows at most.
    Passes that always began at the lowest nonce never reached the lost row; in turns,
    it is found and broadcast again within a few passes."""
    sender = make_sender(node_web3(proxy.url), chain, sessions, lost_after_s=0)
    outbox = Outbox(sessions, sender.address, binding.address)
    for _ in range(5):
        outbox.commit(binding, protocol.request(quorum=1))
    chain.rpc("evm_setAutomine", False)  # the four that reach the pool stay there
    try:
        prepared = sender.prepare_pending()
        for one in prepared[:4]:
            sender.broadcast(one)
        lost = outbox.row("commit", 5)
        assert lost.tx_hash is not None
        lookups = itertools.count(1)
        proxy.inject(
            "rate_limit",
            methods=["eth_getTransactionReceipt", "eth_getTransactionByHash"],
            when=lambda _: next(lookups) % 4 == 0,
            retry_after_s=0.1,
        )

        for _ in range(6):
            attempt(sender.sync_once)

        assert proxy.injected["rate_limit"] >= 5  # every pass was cut short
        assert chain.w3.eth.get_transaction(HexBytes(lost.tx_hash))["nonce"] == lost.nonce
    finally:
        chain.rpc("evm_setAutomine", True)
        chain.rpc("evm_mine")


def test_a_commit_simulated_on_a_backend_behind_the_listener_waits_instead_of_failing(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """The listener has seen the request; the backend that simulates the commit is a block
    behind and answers ``UnknownRequest``. Taken as final, the row would fail and the
    lifecycle would skip the request: it waits, and is sent once the backend caught up."""
    listener = make_listener(chain.w3, sessions, protocol)
    sender = make_sender(node_web3(proxy.url), chain, sessions, not_yet_retry_s=0.05)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    listener.poll_once()  # the node's view: the request's block
    outbox.commit_and_reveal(binding, request_id)
    lagging = proxy.lag(1, pending=True)
    sender.sync_once()
    assert proxy.injected["lag"] > 0
    commit = outbox.row("commit", request_id)
    assert (commit.status, commit.last_error) == (
        "pending",
        f"UnknownRequest(requestId={request_id})",
    )

    lagging.cancel()
    run_sender(sender, sessions)
    assert statuses(sessions) == [("commit", "confirmed"), ("reveal", "confirmed")]


def test_an_unknown_request_on_a_backend_that_caught_up_fails_the_row(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """The same revert from a backend at or past the node's view is final."""
    listener = make_listener(chain.w3, sessions, protocol)
    sender = make_sender(node_web3(proxy.url), chain, sessions)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    listener.poll_once()
    unknown = request_id + 1
    outbox.add("commit", unknown, binding.encode_commit(unknown, bytes(32), b"\x01" * 32))
    sender.sync_once()
    row = outbox.row("commit", unknown)
    assert (row.status, row.last_error) == ("failed", f"UnknownRequest(requestId={unknown})")


def test_a_sent_transaction_is_looked_up_once_a_block_not_every_poll(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """A receipt can only come with a block: polls between two blocks the listener took
    in ask nothing about the rows in flight."""
    w3 = node_web3(proxy.url)
    sender = make_sender(w3, chain, sessions, lookup_every_s=60)
    listener = make_listener(w3, sessions, protocol)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit(binding, request_id)
    listener.poll_once()
    chain.rpc("evm_setAutomine", False)
    try:
        sender.sync_once()  # sent, and looked up once at the listener's block
        assert outbox.row("commit", request_id).status == "sent"
        looks = len(proxy.requests_for("eth_getTransactionReceipt"))
        for _ in range(3):
            sender.sync_once()
        assert len(proxy.requests_for("eth_getTransactionReceipt")) == looks
        chain.rpc("evm_mine")
        listener.poll_once()
        sender.sync_once()
    finally:
        chain.rpc("evm_setAutomine", True)
    assert len(proxy.requests_for("eth_getTransactionReceipt")) == looks + 1
    assert outbox.row("commit", request_id).status == "confirmed"
    assert proxy.requests_for("eth_blockNumber") == []  # the listener's block is the head


def test_a_mined_transaction_is_looked_up_again_as_it_ages_and_after_a_reorg(
    chain: Anvil,
    protocol: Protocol,
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    proxy: RpcProxy,
) -> None:
    """The reorg recheck asks for a confirmed row's receipt when it is 1, 2, 4, 8 ...
    blocks deep, not on every tick; all at once after ``recheck_soon``."""
    sender = make_sender(node_web3(proxy.url), chain, sessions, recheck_interval_s=0)
    outbox = Outbox(sessions, sender.address, binding.address)
    request_id = protocol.request(quorum=1)
    outbox.commit(binding, request_id)
    run_sender(sender, sessions)
    mined_in = outbox.row("commit", request_id).receipt_block
    assert mined_in is not None

    def looks_at(depth: int) -> int:
        while chain.w3.eth.block_number < mined_in + depth:
            chain.rpc("evm_mine")
        before = len(proxy.requests_for("eth_getTransactionReceipt"))
        sender.check_mined()
        sender.check_mined()  # the same depth again: nothing to ask
        return len(proxy.requests_for("eth_getTransactionReceipt")) - before

    assert [looks_at(d) for d in range(1, 10)] == [1, 1, 0, 1, 0, 0, 0, 1, 0]
    sender.recheck_soon()
    assert looks_at(9) == 1
    assert outbox.row("commit", request_id).status == "confirmed"
