"""The outbox sender on a real anvil and Postgres: nonces, simulation, crashes, fee bumps."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3
from web3.exceptions import TransactionNotFound

from oracle.chain.anvil import Anvil
from oracle.chain.commitment import commitment_hash, new_salt
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.sender import TxSender
from oracle.errors import SenderAlreadyRunning
from oracle.store.models import OutgoingTx, TxKind
from oracle.store.outbox import enqueue_tx, find_tx
from tests.support.protocol import DIM_BYTES, STAKE, Protocol, random_bits

ORACLE_KEY = 2  # anvil's third account: Protocol's first oracle


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    return Protocol.deploy(chain.w3)


@pytest.fixture
def binding(chain: Anvil, protocol: Protocol) -> CoordinatorBinding:
    return CoordinatorBinding(chain.w3, protocol.coordinator.address)


@pytest.fixture
def manual_mining(chain: Anvil, protocol: Protocol) -> Iterator[None]:
    """Blocks only when the test mines one (after the contract is deployed)."""
    chain.rpc("evm_setAutomine", False)
    try:
        yield
    finally:
        chain.rpc("evm_setAutomine", True)


def make_sender(chain: Anvil, sessions: sessionmaker[Session], **options: Any) -> TxSender:
    account = Account.from_key(chain.private_keys[ORACLE_KEY])
    # Anvil answers at once and never lags: a transaction it does not know is lost. (The
    # grace against lagging backends is tested behind the fault proxy.)
    options.setdefault("lost_after_s", 0.0)
    return TxSender(
        w3=chain.w3,
        session_factory=sessions,
        account=account,
        chain_id=chain.chain_id,
        **options,
    )


class Outbox:
    """Enqueues the oracle's decisions the way the request lifecycle does."""

    def __init__(
        self, sessions: sessionmaker[Session], sender: TxSender, binding: CoordinatorBinding
    ):
        self.sessions = sessions
        self.sender = sender
        self.binding = binding
        self.rng = random.Random(11)

    def add(self, kind: TxKind, request_id: int | None, data: bytes, value_wei: int = 0) -> None:
        with self.sessions.begin() as session:
            assert enqueue_tx(
                session,
                kind=kind,
                request_id=request_id,
                from_address=self.sender.address,
                to_address=self.binding.address,
                data=data,
                value_wei=value_wei,
            )

    def commit(self, request_id: int) -> tuple[str, bytes, bytes]:
        """A commit to the request as the chain holds it now; its output, bits and salt."""
        output, bits, salt = "Paris", random_bits(self.rng, DIM_BYTES), new_salt()
        request_hash = self.binding.request_hash(request_id)
        commitment = commitment_hash(
            request_id=request_id,
            request_hash=request_hash,
            oracle=self.sender.address,
            output=output,
            model_index=0,
            embedding_bits=bits,
            salt=salt,
        )
        commit = self.binding.encode_commit(request_id, request_hash, commitment)
        self.add("commit", request_id, commit)
        return output, bits, salt

    def commit_and_reveal(self, request_id: int, *, salt_for_reveal: bytes | None = None) -> None:
        output, bits, salt = self.commit(request_id)
        reveal = self.binding.encode_reveal(request_id, output, 0, bits, salt_for_reveal or salt)
        self.add("reveal", request_id, reveal)

    def row(self, kind: TxKind, request_id: int | None) -> OutgoingTx:
        with self.sessions() as session:
            found = find_tx(session, kind=kind, request_id=request_id)
            assert found is not None
            return found

    def statuses(self) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.scalars(select(OutgoingTx).order_by(OutgoingTx.id))
            return [(r.kind, r.status) for r in rows]


@pytest.fixture
def sender(chain: Anvil, sessions: sessionmaker[Session]) -> TxSender:
    return make_sender(chain, sessions, not_yet_retry_s=0.05)


@pytest.fixture
def outbox(
    sessions: sessionmaker[Session], sender: TxSender, binding: CoordinatorBinding
) -> Outbox:
    return Outbox(sessions, sender, binding)


def nonce_of(chain: Anvil, address: str) -> int:
    return chain.w3.eth.get_transaction_count(Web3.to_checksum_address(address), "latest")


def sync(sender: TxSender, times: int = 2) -> None:
    for _ in range(times):
        sender.sync_once()


def test_register_commit_and_reveal_confirm_with_consecutive_nonces(
    chain: Anvil, protocol: Protocol, sender: TxSender, outbox: Outbox, binding: CoordinatorBinding
) -> None:
    first_nonce = nonce_of(chain, sender.address)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender, 1)
    assert binding.is_registered(sender.address)

    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(request_id)
    sync(sender)

    assert outbox.statuses() == [
        ("register", "confirmed"),
        ("commit", "confirmed"),
        ("reveal", "confirmed"),
    ]
    rows = [
        outbox.row("register", None),
        outbox.row("commit", request_id),
        outbox.row("reveal", request_id),
    ]
    assert [r.nonce for r in rows] == [first_nonce, first_nonce + 1, first_nonce + 2]
    for row in rows:
        assert row.tx_hash is not None and row.receipt_block is not None
        receipt = chain.w3.eth.get_transaction_receipt(HexBytes(row.tx_hash))
        assert receipt["status"] == 1 and row.gas_limit is not None
        assert receipt["gasUsed"] < row.gas_limit  # estimate plus margin
    seat, _hash = protocol.coordinator.functions.getSeat(request_id, 0).call()
    assert seat[0].lower() == sender.address and seat[3] is True  # revealed
    assert nonce_of(chain, sender.address) == first_nonce + 3


def test_work_already_done_is_skipped_with_the_reason(
    chain: Anvil, protocol: Protocol, sender: TxSender, outbox: Outbox, binding: CoordinatorBinding
) -> None:
    protocol.register_oracles(1)  # registered behind the outbox's back
    before = nonce_of(chain, sender.address)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender)

    row = outbox.row("register", None)
    assert row.status == "skipped"
    assert row.last_error == f"AlreadyRegistered(oracle={Web3.to_checksum_address(sender.address)})"
    assert row.tx_hash is None
    assert nonce_of(chain, sender.address) == before


def test_not_yet_waits_and_later_succeeds(
    chain: Anvil, protocol: Protocol, sender: TxSender, outbox: Outbox
) -> None:
    protocol.register_oracles(2)  # the second never commits: commits close at the deadline
    request_id = protocol.request(quorum=2)
    outbox.commit_and_reveal(request_id)
    sync(sender)

    reveal = outbox.row("reveal", request_id)
    assert reveal.status == "pending"
    assert reveal.last_error == f"RevealNotOpen(requestId={request_id})"
    assert reveal.not_before is not None and reveal.nonce is None

    protocol.advance(protocol.commit_time_left(request_id) + 1)
    time.sleep(0.2)  # past not_before
    sync(sender)
    assert outbox.row("reveal", request_id).status == "confirmed"


def test_other_reverts_fail_with_the_decoded_reason(
    chain: Anvil,
    protocol: Protocol,
    sender: TxSender,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    protocol.register_oracles(1)
    request_id = protocol.request(quorum=1)
    outbox.commit_and_reveal(request_id, salt_for_reveal=b"\x01" * 32)  # not the committed salt
    with caplog.at_level(logging.ERROR, logger="oracle.chain.sender"):
        sync(sender)

    reveal = outbox.row("reveal", request_id)
    expected = (
        f"CommitmentMismatch(requestId={request_id}, "
        f"oracle={Web3.to_checksum_address(sender.address)})"
    )
    assert (reveal.status, reveal.last_error) == ("failed", expected)
    (record,) = [r for r in caplog.records if r.getMessage() == "not sent: the call would revert"]
    assert (record.request_id, record.kind, record.reason) == (request_id, "reveal", expected)  # type: ignore[attr-defined]


def test_a_crash_between_persisting_and_broadcasting_is_recovered_without_sending_twice(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    binding: CoordinatorBinding,
) -> None:
    protocol.register_oracles(1)
    first_nonce = nonce_of(chain, protocol.oracles[0])
    crashed = make_sender(chain, sessions)
    outbox = Outbox(sessions, crashed, binding)
    first = protocol.request(quorum=1)
    commit = binding.encode_commit(first, binding.request_hash(first), b"\x11" * 32)
    outbox.add("commit", first, commit)

    assert len(crashed.prepare_pending()) == 1  # stored as sent ...
    del crashed  # ... and the process dies before broadcasting
    persisted = outbox.row("commit", first)
    assert persisted.status == "sent" and persisted.nonce == first_nonce
    assert persisted.tx_hash is not None
    with pytest.raises(TransactionNotFound):
        chain.w3.eth.get_transaction(HexBytes(persisted.tx_hash))

    second = protocol.request(quorum=1)  # decided while the node was down
    commit = binding.encode_commit(second, binding.request_hash(second), b"\x22" * 32)
    outbox.add("commit", second, commit)
    restarted = make_sender(chain, sessions)
    sync(restarted)

    recovered, later = outbox.row("commit", first), outbox.row("commit", second)
    assert (recovered.status, recovered.tx_hash, recovered.nonce) == (
        "confirmed",
        persisted.tx_hash,  # the very same signed transaction
        first_nonce,
    )
    assert (later.status, later.nonce) == ("confirmed", first_nonce + 1)
    assert nonce_of(chain, protocol.oracles[0]) == first_nonce + 2  # two sent, each once


@pytest.mark.usefixtures("manual_mining")
def test_a_stuck_transaction_is_replaced_with_higher_fees(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    binding: CoordinatorBinding,
) -> None:
    sender = make_sender(chain, sessions, bump_after_s=0.2, fee_bump_percent=15)
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sender.sync_once()
    stuck = outbox.row("register", None)
    assert stuck.status == "sent" and stuck.tx_hash is not None
    in_pool = chain.w3.eth.get_transaction(HexBytes(stuck.tx_hash))
    assert in_pool["blockNumber"] is None  # waiting in the pool

    time.sleep(0.3)
    sender.sync_once()
    bumped = outbox.row("register", None)
    assert bumped.tx_hash != stuck.tx_hash and bumped.nonce == stuck.nonce
    assert bumped.replaced_tx_hashes == [stuck.tx_hash]
    assert stuck.max_fee_per_gas is not None and stuck.max_priority_fee_per_gas is not None
    assert bumped.max_fee_per_gas is not None and bumped.max_priority_fee_per_gas is not None
    assert bumped.max_fee_per_gas * 100 >= stuck.max_fee_per_gas * 115
    assert bumped.max_priority_fee_per_gas * 100 >= stuck.max_priority_fee_per_gas * 115

    chain.rpc("evm_mine")
    sender.sync_once()
    done = outbox.row("register", None)
    assert (done.status, done.tx_hash) == ("confirmed", bumped.tx_hash)
    assert done.receipt_block == chain.w3.eth.block_number
    assert binding.is_registered(sender.address)
    with pytest.raises(TransactionNotFound):  # the replaced version never landed
        chain.w3.eth.get_transaction_receipt(HexBytes(stuck.tx_hash))


def test_one_sender_per_key(chain: Anvil, sessions: sessionmaker[Session]) -> None:
    first = make_sender(chain, sessions)
    second = make_sender(chain, sessions)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(first.run(stop, poll_interval=0.05))
        await asyncio.sleep(0.3)
        with pytest.raises(SenderAlreadyRunning):
            await second.run(stop, poll_interval=0.05)
        stop.set()
        await asyncio.wait_for(running, timeout=5)
        # Once the first one stopped, the key is free again.
        again = asyncio.Event()
        again.set()
        await second.run(again, poll_interval=0.05)

    asyncio.run(scenario())
