"""The models round-trip chain values and the schema refuses what it must."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from oracle.store import make_session_factory
from oracle.store.models import Job, OutgoingTx, Request

MAX_UINT256 = 2**256 - 1
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ADDRESS = "0x" + "ab" * 20


def make_request(**overrides: object) -> Request:
    fields: dict[str, object] = {
        "id": MAX_UINT256,
        "requester": ADDRESS,
        "prompt": "What is the capital of France?",
        "accepted_models": ["SmolLM2-135M-Instruct-Q4_1"],
        "temperature_milli": 700,
        "max_tokens": 64,
        "quorum": 3,
        "max_time_ms": 30_000,
        "sec_distance_bp": 3500,
        "sec_percentage_bp": 6600,
        "embedding_model": "all-MiniLM-L6-v2",
        "callback": None,
        "callback_gas_limit": 0,
        "fee_wei": MAX_UINT256,
        "commit_deadline": NOW,
        "reveal_deadline": NOW + timedelta(seconds=60),
        "dispute_window_s": 10,
        "block_number": 7,
    }
    fields.update(overrides)
    return Request(**fields)


def test_a_request_round_trips_uint256_and_aware_datetimes(db_engine: Engine) -> None:
    sessions = make_session_factory(db_engine)
    with sessions.begin() as session:
        session.add(make_request())
    with sessions() as session:
        stored = session.scalars(select(Request)).one()
    assert stored.id == MAX_UINT256
    assert isinstance(stored.fee_wei, int)
    assert stored.commit_deadline == NOW
    assert stored.created_at.tzinfo is not None
    assert stored.phase == "requested"


@pytest.mark.parametrize(
    "overrides",
    [{"phase": "pondering"}, {"requester": ADDRESS.upper()}, {"accepted_models": []}],
)
def test_checks_refuse_bad_requests(db_engine: Engine, overrides: dict[str, object]) -> None:
    sessions = make_session_factory(db_engine)
    with pytest.raises(IntegrityError, match="ck_requests_"), sessions.begin() as session:
        session.add(make_request(**overrides))


def test_a_running_job_needs_a_lease(db_engine: Engine) -> None:
    sessions = make_session_factory(db_engine)
    job = Job(kind="inference", priority=1, deadline=NOW, status="running")
    with (
        pytest.raises(IntegrityError, match="ck_jobs_running_has_lease"),
        sessions.begin() as session,
    ):
        session.add(job)


@pytest.mark.parametrize("request_id", [5, None])
def test_the_same_transaction_decision_is_recorded_once(
    db_engine: Engine, request_id: int | None
) -> None:
    decision = {
        "kind": "register" if request_id is None else "commit",
        "request_id": request_id,
        "from_address": ADDRESS,
        "to_address": ADDRESS,
        "data": b"\x01",
    }
    statement = (
        insert(OutgoingTx).values(decision).on_conflict_do_nothing().returning(OutgoingTx.id)
    )
    with db_engine.begin() as connection:
        first = connection.execute(statement).all()
        second = connection.execute(statement).all()
    assert len(first) == 1
    assert second == []
