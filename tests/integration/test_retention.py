"""Pruning on a real database: what finished long ago goes, nothing open or unsent does."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, text

from oracle.store import make_session_factory
from oracle.store.models import Answer, ChainEvent, Job, OutgoingTx, Seat
from oracle.store.retention import prune_old_rows
from tests.integration.test_store_models import NOW, make_request

WEEK = timedelta(days=7)
ORACLE = "0x" + "cd" * 20


def add_request(engine: Engine, request_id: int, phase: str, *, age_days: float) -> None:
    """A request with a seat, an answer, a job and a chain event, all ``age_days`` old."""
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        session.add(make_request(id=request_id, phase=phase))
        session.flush()
        session.add(Seat(request_id=request_id, seat_no=0, oracle=ORACLE,
                         commitment=b"\1" * 32, commit_block_number=8))  # fmt: skip
        session.add(Answer(request_id=request_id, model="m", model_index=0, output="Paris",
                           embedding_bits=b"\0" * 48, salt=b"\2" * 32, seed=1,
                           commitment=b"\1" * 32))  # fmt: skip
        session.add(Job(kind="inference", request_id=request_id, priority=1, deadline=NOW,
                        status="done"))  # fmt: skip
        session.add(ChainEvent(block_number=7, block_hash=request_id.to_bytes(32, "big"),
                               log_index=0, tx_hash=b"\3" * 32, event="InferenceRequested",
                               request_id=request_id, payload={}))  # fmt: skip
    age(engine, f"requests WHERE id = {request_id}", "updated_at", age_days)
    age(engine, f"chain_events WHERE request_id = {request_id}", "created_at", age_days)


def add_tx(
    engine: Engine, request_id: int | None, kind: str, status: str, *, age_days: float
) -> int:
    sessions = make_session_factory(engine)
    sent = status in ("sent", "confirmed")
    with sessions.begin() as session:
        tx = OutgoingTx(kind=kind, request_id=request_id, from_address=ORACLE,
                        to_address=ORACLE, data=b"", status=status,
                        nonce=(request_id or 0) if sent else None,
                        tx_hash=b"\4" * 32 if sent else None)  # fmt: skip
        session.add(tx)
        session.flush()
        tx_id = tx.id
    age(engine, f"outgoing_txs WHERE id = {tx_id}", "created_at", age_days)
    return tx_id


def age(engine: Engine, table_where: str, column: str, days: float) -> None:
    table, where = table_where.split(" WHERE ")
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {table} SET {column} = now() - make_interval(days => :d) WHERE {where}"),
            {"d": days},
        )


def ids(engine: Engine, sql: str) -> set[int]:
    with engine.connect() as conn:
        return {int(row[0]) for row in conn.execute(text(sql))}


def test_old_finished_rows_go_and_everything_open_or_unsent_stays(db_engine: Engine) -> None:
    add_request(db_engine, 1, "finalized", age_days=10)  # pruned, with its seats and answer
    add_request(db_engine, 2, "failed", age_days=10)  # pruned
    add_request(db_engine, 3, "skipped", age_days=10)  # pruned
    add_request(db_engine, 4, "finalized", age_days=2)  # within retention: kept
    add_request(db_engine, 5, "revealing", age_days=30)  # open, however old: kept
    add_request(db_engine, 6, "finalized", age_days=10)  # its finalize still in flight: kept
    old_commit = add_tx(db_engine, 1, "commit", "confirmed", age_days=10)
    old_skipped = add_tx(db_engine, 2, "reveal", "skipped", age_days=10)
    old_register = add_tx(db_engine, None, "register", "confirmed", age_days=10)
    in_flight = add_tx(db_engine, 6, "finalize", "sent", age_days=10)
    unsent = add_tx(db_engine, 6, "dispute", "pending", age_days=10)
    open_commit = add_tx(db_engine, 5, "commit", "confirmed", age_days=30)
    recent = add_tx(db_engine, 4, "commit", "confirmed", age_days=2)

    counts = prune_old_rows(db_engine, WEEK)

    assert ids(db_engine, "SELECT id FROM requests") == {4, 5, 6}
    assert ids(db_engine, "SELECT request_id FROM seats") == {4, 5, 6}
    assert ids(db_engine, "SELECT request_id FROM answers") == {4, 5, 6}
    assert ids(db_engine, "SELECT request_id FROM jobs") == {4, 5, 6}
    assert ids(db_engine, "SELECT request_id FROM chain_events") == {4, 5}  # 6: finished
    assert ids(db_engine, "SELECT id FROM outgoing_txs") == {in_flight, unsent, open_commit, recent}
    assert {old_commit, old_skipped, old_register}.isdisjoint(
        ids(db_engine, "SELECT id FROM outgoing_txs")
    )
    assert counts == {"requests": 3, "events": 4, "transactions": 3}
    assert prune_old_rows(db_engine, WEEK) == {"requests": 0, "events": 0, "transactions": 0}


def test_batches_go_on_until_nothing_is_left(db_engine: Engine) -> None:
    for request_id in range(10, 17):
        add_request(db_engine, request_id, "finalized", age_days=8)
    assert prune_old_rows(db_engine, WEEK, batch=3)["requests"] == 7
    assert ids(db_engine, "SELECT id FROM requests") == set()


def test_a_longer_retention_keeps_more(db_engine: Engine) -> None:
    add_request(db_engine, 20, "finalized", age_days=10)
    assert prune_old_rows(db_engine, timedelta(days=30))["requests"] == 0
    assert ids(db_engine, "SELECT id FROM requests") == {20}
