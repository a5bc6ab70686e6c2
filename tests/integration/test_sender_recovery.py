"""What the chain undoes or refuses: reorgs, nonce holes, fee ceilings, missing funds, and
a lost single-writer lock."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from eth_account import Account
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.listener import Listener
from oracle.chain.sender import TxSender
from oracle.errors import SenderAlreadyRunning
from oracle.store.models import Answer, OutgoingTx, Request
from oracle.store.outbox import enqueue_tx
from tests.integration.test_sender import (
    ORACLE_KEY,
    Outbox,
    binding,
    make_sender,
    manual_mining,
    nonce_of,
    protocol,
    sync,
)
from tests.support.protocol import STAKE, Protocol

__all__ = ["binding", "manual_mining", "protocol"]  # fixtures shared with it


def test_a_transaction_a_reorg_took_off_the_chain_is_sent_again(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    sender = make_sender(chain, sessions)
    outbox = Outbox(sessions, sender, binding)
    request_id = protocol.request(quorum=1)
    protocol_registered = chain.rpc("evm_snapshot")
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender)
    assert outbox.row("register", None).status == "confirmed"
    mined_at = outbox.row("register", None).receipt_block

    assert chain.rpc("evm_revert", protocol_registered) is True  # the register is gone
    chain.rpc("anvil_mine", "0x3")  # the new chain is longer than the old one
    assert not binding.is_registered(sender.address)

    sender.recheck_soon()  # what the listener does when it sees a reorg
    sender.sync_once()
    row = outbox.row("register", None)
    assert row.status == "sent"
    assert row.last_error == f"mined in block {mined_at}, which left the chain"
    sync(sender)
    row = outbox.row("register", None)
    assert row.status == "confirmed" and row.nonce == 0
    assert binding.is_registered(sender.address)
    assert request_id == protocol.request(quorum=1) - 1  # the chain goes on as before


def test_rows_confirmed_long_ago_are_not_looked_up_again(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    sender = make_sender(chain, sessions, recheck_blocks=2)
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender)
    chain.rpc("anvil_mine", "0x5")
    snapshot = chain.rpc("evm_snapshot")
    chain.rpc("evm_revert", snapshot)
    sender.recheck_soon()
    sender.sync_once()
    assert outbox.row("register", None).status == "confirmed"


def test_a_nonce_hole_below_sent_transactions_is_filled(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    sender = make_sender(chain, sessions)
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    before = nonce_of(chain, sender.address)
    sender._next_nonce = before + 1  # a nonce lost, as after a re-decided transaction
    sync(sender, times=3)
    row = outbox.row("register", None)
    assert (row.status, row.nonce) == ("confirmed", before + 1)
    assert nonce_of(chain, sender.address) == before + 2  # the hole went to a filler
    assert binding.is_registered(sender.address)


def test_fee_bumps_stop_at_the_ceiling_and_the_row_gives_up_with_its_reason(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    binding: CoordinatorBinding,
    manual_mining: None,
) -> None:
    sender = make_sender(chain, sessions, bump_after_s=0, max_bumps=2, give_up_after_s=3600)
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    for _ in range(5):  # one send, two bumps, then the ceiling
        sender.sync_once()
    row = outbox.row("register", None)
    assert row.status == "sent" and row.attempts == 3
    assert len(row.replaced_tx_hashes) == 2
    sender._give_up_after = timedelta(0)  # as if the hour at the ceiling had passed
    sender.sync_once()
    row = outbox.row("register", None)
    assert row.status == "failed"
    assert row.last_error is not None
    assert row.last_error.startswith("not mined after 2 fee bumps")
    assert row.last_error.endswith("at the ceiling; gave up")


def test_a_key_without_funds_waits_with_a_clear_error_and_sends_once_funded(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    binding: CoordinatorBinding,
    caplog: pytest.LogCaptureFixture,
) -> None:
    poor = Account.create()
    chain.rpc("anvil_setBalance", poor.address, hex(STAKE))  # the stake, nothing for gas
    sender = TxSender(
        w3=chain.w3, session_factory=sessions, account=poor, chain_id=chain.chain_id, lost_after_s=0
    )
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    with caplog.at_level(logging.ERROR, logger="oracle.chain.sender"):
        sync(sender, times=3)
    row = outbox.row("register", None)
    assert row.status == "sent"
    assert row.last_error is not None and "insufficient funds" in row.last_error.lower()
    refusals = [r for r in caplog.records if "too little ETH" in r.getMessage()]
    assert len(refusals) == 1  # asked once, then left alone for a while

    chain.rpc("anvil_setBalance", poor.address, hex(10**18))
    sender._rebroadcast_after.clear()  # the wait is seconds long; skip it
    sync(sender)
    assert outbox.row("register", None).status == "confirmed"
    assert binding.is_registered(sender.address)


def test_after_losing_its_lock_the_sender_takes_it_back_or_stops(
    chain: Anvil, sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    sender = make_sender(chain, sessions)
    key = Account.from_key(chain.private_keys[ORACLE_KEY]).address.lower()
    assert sender.address == key

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(sender.run(stop, poll_interval=0.05))
        await asyncio.sleep(0.3)
        lock = sender._lock_connection
        assert lock is not None
        pid = lock.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with db_engine.begin() as conn:  # a Postgres restart, for this connection
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(0.5)
        assert not running.done()  # it took the lock again and carries on
        assert sender._lock_connection is not None and sender._lock_connection is not lock

        retaken = sender._lock_connection
        pid = retaken.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        other = make_sender(chain, sessions)
        with db_engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other_lock = await asyncio.to_thread(other._lock_key)  # another process was quicker
        try:
            with pytest.raises(SenderAlreadyRunning):
                await asyncio.wait_for(running, timeout=10)
        finally:
            other_lock.close()
            stop.set()

    asyncio.run(scenario())


def test_a_lock_lost_while_the_database_is_away_is_taken_again_once_it_is_back(
    chain: Anvil, sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    sender = make_sender(chain, sessions)
    take_lock = sender._lock_key
    refusals = []

    def database_restarting() -> Connection:
        if not refusals:  # the first try after the cut finds the database still away
            refusals.append(1)
            raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))
        return take_lock()

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(sender.run(stop, poll_interval=0.05))
        await asyncio.sleep(0.3)
        lock = sender._lock_connection
        assert lock is not None
        sender._lock_key = database_restarting  # type: ignore[method-assign]
        pid = lock.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with db_engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(100):
            await asyncio.sleep(0.05)
            if refusals and sender._lock_connection is not None:
                break
        assert refusals and sender._lock_connection is not None
        holder = sender._lock_connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with db_engine.connect() as conn:  # the lock is really held again, by that connection
            held = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid = :pid"
                ),
                {"pid": holder},
            )
        assert held == 1
        stop.set()
        await asyncio.wait_for(running, timeout=10)

    asyncio.run(scenario())


def test_a_lost_reveal_is_decided_again_once_the_chain_lets_it_through(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    """A reorg drops another node's commit and this node's reveal: sent again at once, the
    reveal would revert (reveals open when every seat is taken). It goes back to pending
    without holding its nonce, and is sent once the other commit is back."""
    import random

    from tests.support.protocol import random_bits

    sender = make_sender(chain, sessions)
    outbox = Outbox(sessions, sender, binding)
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender)
    other = protocol.oracles[1]
    protocol.transact("register", protocol.coordinator.functions.register(), other, value=STAKE)
    request_id = protocol.request(quorum=2)
    outbox.commit_and_reveal(request_id)
    sender.sync_once()  # the commit goes; the reveal waits for it
    assert outbox.row("commit", request_id).status == "confirmed"
    before_other = chain.rpc("evm_snapshot")
    protocol.commit(other, request_id, "Paris", random_bits(random.Random(3)))
    sync(sender, times=3)
    assert outbox.row("reveal", request_id).status == "confirmed"

    assert chain.rpc("evm_revert", before_other) is True  # their commit and our reveal: gone
    chain.rpc("anvil_mine", "0x3")
    sender.recheck_soon()
    sync(sender, times=2)
    waiting = outbox.row("reveal", request_id)
    assert (waiting.status, waiting.nonce) == ("pending", None)  # not failed, no nonce held
    assert waiting.last_error is not None and "RevealNotOpen" in waiting.last_error

    protocol.commit(other, request_id, "Paris", random_bits(random.Random(3)))
    waiting_until = waiting.not_before
    if waiting_until is not None:  # the contract said "not yet": skip the wait
        with sessions.begin() as session:
            session.get_one(OutgoingTx, waiting.id).not_before = None
    sync(sender, times=2)
    assert outbox.row("reveal", request_id).status == "confirmed"
    assert outbox.row("commit", request_id).status == "confirmed"


def test_a_nonce_a_dropped_transaction_held_is_not_given_to_a_filler(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    """After a reorg, the hole below a newer transaction is the dropped one's nonce: it is
    sent again there, not replaced by a transfer to self."""
    sender = make_sender(chain, sessions, recheck_interval_s=3600)  # only on cause
    outbox = Outbox(sessions, sender, binding)
    before = chain.rpc("evm_snapshot")
    outbox.add("register", None, binding.encode_register(), value_wei=STAKE)
    sync(sender)
    registered = outbox.row("register", None)
    assert registered.status == "confirmed" and registered.nonce is not None
    assert chain.rpc("evm_revert", before) is True
    chain.rpc("anvil_mine", "0x2")

    with sessions.begin() as session:  # a later decision that needs nothing of the first
        enqueue_tx(
            session,
            kind="register",
            request_id=None,
            dedupe_key="again",
            from_address=sender.address,
            to_address=binding.address,
            data=binding.encode_register(),
            value_wei=STAKE,
        )
    sync(sender, times=4)
    again = outbox.row("register", None)
    assert (again.status, again.nonce) == ("confirmed", registered.nonce)
    assert binding.is_registered(sender.address)
    assert nonce_of(chain, sender.address) == registered.nonce + 2  # no filler between


def test_a_commit_a_reorg_dropped_is_not_sent_again_onto_the_request_that_took_its_id(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    """A reorg drops request A and our commit to it; request B takes A's id. Sent again as
    it was, the commit would take a seat on B that it can never reveal, and be slashed:
    the contract refuses it (``StaleRequest``), and the row fails for good unsent."""
    protocol.register_oracles(1)
    sender = make_sender(chain, sessions)
    outbox = Outbox(sessions, sender, binding)
    before_a = chain.rpc("evm_snapshot")
    rid_a = protocol.request(quorum=1, prompt="What is the capital of France?")
    outbox.commit(rid_a)
    sync(sender)
    committed = outbox.row("commit", rid_a)
    assert committed.status == "confirmed"

    assert chain.rpc("evm_revert", before_a) is True
    rid_b = protocol.request(quorum=1, prompt="Write a poem about Lyon.")
    assert rid_b == rid_a
    chain.rpc("anvil_mine", "0x3")
    sender.recheck_soon()
    sync(sender, times=4)
    row = outbox.row("commit", rid_a)
    assert (row.status, row.nonce) == ("failed", None)
    assert row.last_error == f"StaleRequest(requestId={rid_b})"
    assert protocol.seated(rid_b) == []
    assert nonce_of(chain, sender.address) == committed.nonce  # nothing sent in its name


def test_a_lost_commit_of_an_orphaned_request_waits_without_its_nonce(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], binding: CoordinatorBinding
) -> None:
    """The listener orphans a request we answered (a reorg dropped its announcement, and
    the new chain gave its id to another request). Our commit, which the reorg dropped
    too, is not sent again whatever a simulation says: it goes back to pending without
    its nonce, and waits there while the request stays orphaned."""
    protocol.register_oracles(1)
    sender = make_sender(chain, sessions)
    outbox = Outbox(sessions, sender, binding)
    listener = Listener(w3=chain.w3, session_factory=sessions, binding=binding)
    listener.start_block = chain.w3.eth.block_number
    before_a = chain.rpc("evm_snapshot")
    rid_a = protocol.request(quorum=1, prompt="What is the capital of France?")
    listener.poll_once()
    output, bits, salt = outbox.commit(rid_a)
    with sessions.begin() as session:  # what the lifecycle stores with its commit
        session.add(
            Answer(
                request_id=rid_a,
                model="SmolLM2-135M-Instruct-Q4_1",
                model_index=0,
                output=output,
                embedding_bits=bits,
                salt=salt,
                seed=1,
                commitment=bytes(32),
            )
        )
    sync(sender)
    assert outbox.row("commit", rid_a).status == "confirmed"

    assert chain.rpc("evm_revert", before_a) is True
    rid_b = protocol.request(quorum=1, prompt="Write a poem about Lyon.")
    assert rid_b == rid_a
    chain.rpc("anvil_mine", "0x3")
    listener.poll_once()
    with sessions() as session:
        assert session.get_one(Request, rid_a).phase == "orphaned"
    sender.recheck_soon()  # what the listener's reorg callback does
    sync(sender, times=4)
    row = outbox.row("commit", rid_a)
    assert (row.status, row.nonce) == ("pending", None)
    assert row.last_error == "lost by the chain, and its request was orphaned by a reorg"
    assert protocol.seated(rid_b) == []
