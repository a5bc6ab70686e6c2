"""A lifecycle pass: which requests it looks at (news, a check come due), what a step does
once a job is done, and that the chain is asked before a request's row is locked."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.lifecycle.admission import Offer
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.lifecycle.transitions import COMMIT_LANDING_GRACE_S
from oracle.store import make_session_factory
from oracle.store.chain_state import apply_event
from oracle.store.models import Answer, Job, OutgoingTx, Request, RequestWake
from oracle.store.outbox import enqueue_tx
from oracle.store.queue import claim_jobs, complete_job, enqueue_job
from oracle.store.wakes import wake_requests
from tests.integration.test_chain_state import (
    ALICE,
    BOB,
    CAROL,
    at,
    committed,
    requested,
    revealed,
)

SMOL = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"
COORDINATOR = "0x" + "c0" * 20
CTX = NodeContext(
    address=ALICE,
    coordinator=COORDINATOR,
    models={SMOL: ModelProfile(name=SMOL, context_tokens=4096)},
    embedding_models=[MINILM],
)


def test_a_pass_leaves_out_requests_whose_answer_is_still_being_computed(
    db_engine: Engine, chain: Anvil
) -> None:
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    _admitted_request(sessions, request_id=1)
    with sessions.begin() as session:
        apply_event(session, requested(2, at(11)))  # just stored: due at once

    def advance(now: datetime | None = None) -> int:
        return advance_requests(sessions, CTX, binding, now)

    assert advance() == 1  # request 2 only; request 1 waits for its inference
    assert _phase(sessions, 2) != "requested"

    _run_job(db_engine, "inference", {"text": "Paris.", "completion_tokens": 3})
    assert advance() == 1  # the job's end woke request 1: its step queues the embedding
    assert _job_kinds(sessions, 1) == ["inference", "embedding"]
    assert advance() == 0  # and waits for it

    _run_job(db_engine, "embedding", {"bits": "ab" * 48})
    assert advance() == 1
    with sessions() as session:
        answer = session.get(Answer, 1)
        assert answer is not None and answer.output == "Paris."
        commits = session.scalars(select(OutgoingTx.kind).where(OutgoingTx.request_id == 1))
        assert list(commits) == ["commit"]
    # answered, waiting for seats (news) or its commit deadline (the clock): not looked at
    assert advance() == 0

    # the clock: our commit never landed, and the commit deadline (and a grace) passed
    with sessions() as session:
        request = session.get_one(Request, 1)
        late = request.commit_deadline + timedelta(seconds=COMMIT_LANDING_GRACE_S + 1)
    assert advance(late) >= 1
    assert _phase(sessions, 1) == "skipped"


def test_a_mined_commit_the_listener_reports_late_is_still_revealed(
    db_engine: Engine, chain: Anvil
) -> None:
    """The sender holds our commit's receipt, but the listener (waiting for confirmations,
    or back from an outage) reports our seat after the commit deadline's grace: the node
    keeps waiting for it, and reveals, instead of leaving a seat the contract would slash
    for never being revealed."""
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    late, reveal_deadline = _past_the_commit_grace(sessions, binding, commit_status="confirmed")
    with sessions() as session:
        assert session.get_one(Request, 1).next_check_at == reveal_deadline

    with sessions.begin() as session:  # the listener catches up: our seat is on chain
        apply_event(session, committed(1, 0, ALICE, at(20)))
        wake_requests(session.connection(), [1], "chain event")
    advance_requests(sessions, CTX, binding, late + timedelta(seconds=1))
    with sessions() as session:
        kinds = session.scalars(select(OutgoingTx.kind).where(OutgoingTx.request_id == 1))
        assert sorted(kinds) == ["commit", "reveal"]


def test_a_sent_commit_whose_seat_never_shows_is_given_up_at_the_reveal_deadline(
    db_engine: Engine, chain: Anvil
) -> None:
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    _late, reveal_deadline = _past_the_commit_grace(sessions, binding, commit_status="sent")
    advance_requests(sessions, CTX, binding, reveal_deadline)
    assert _phase(sessions, 1) == "skipped"
    with sessions() as session:
        assert "no seat of ours was seen" in (session.get_one(Request, 1).skip_reason or "")


def test_a_chain_event_wakes_its_request_and_only_it(db_engine: Engine, chain: Anvil) -> None:
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    for request_id in (1, 2, 3):
        _admitted_request(sessions, request_id=request_id)
    _answered(sessions, request_id=2)
    assert advance_requests(sessions, CTX, binding) == 0

    with sessions.begin() as session:  # as the listener stores a block's events
        apply_event(session, committed(2, 0, ALICE, at(20)))
        wake_requests(session.connection(), [2], "chain event")
    assert advance_requests(sessions, CTX, binding) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(RequestWake)) == 0
        next_check = session.get_one(Request, 2).next_check_at
        assert next_check == session.get_one(Request, 2).commit_deadline  # then reveal
    assert advance_requests(sessions, CTX, binding) == 0


def test_the_chain_is_asked_before_the_row_is_locked(db_engine: Engine, chain: Anvil) -> None:
    """Every seat revealed: the close of disputes is an RPC call, made holding no lock."""
    sessions = make_session_factory(db_engine)
    with sessions.begin() as session:
        apply_event(session, requested(1, at(10)))
        for seat, oracle in enumerate((ALICE, BOB, CAROL)):
            apply_event(session, committed(1, seat, oracle, at(11, seat)))
            apply_event(session, revealed(1, seat, oracle, at(12, seat)))
        session.get_one(Request, 1).phase = "revealing"
    lock_free_while_asked: list[bool] = []

    class WatchedChain(CoordinatorBinding):
        def dispute_deadline(self, request_id: int, *, as_of: Hashable = None) -> int:
            with db_engine.connect() as other:
                try:
                    other.execute(
                        text("SELECT 1 FROM requests WHERE id = :id FOR UPDATE NOWAIT"),
                        {"id": request_id},
                    )
                    lock_free_while_asked.append(True)
                except OperationalError:
                    lock_free_while_asked.append(False)
                other.rollback()
            return 1_800_000_100

    watched = WatchedChain(chain.w3, COORDINATOR)
    assert advance_requests(sessions, CTX, watched) == 1
    assert lock_free_while_asked == [True]
    assert _phase(sessions, 1) == "finalizing"
    with sessions() as session:  # verification queued for the other seats' reveals
        kinds = session.scalars(select(Job.kind).where(Job.request_id == 1))
        assert sorted(kinds) == ["verification", "verification"]


def _admitted_request(sessions: sessionmaker[Session], *, request_id: int) -> None:
    with sessions.begin() as session:
        apply_event(session, requested(request_id, at(10, log_index=request_id)))
        request = session.get(Request, request_id)
        assert request is not None
        request.phase = "committing"
        enqueue_job(
            session.connection(),
            kind="inference",
            request_id=request_id,
            model=SMOL,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(minutes=5),
            payload={"prompt": request.prompt, "seed": 1, "model_index": 0},
            pay_per_token_wei=Offer(
                fee_wei=request.fee_wei, quorum=request.quorum, max_tokens=request.max_tokens
            ).pay_per_token_wei,
        )
        request.next_check_at = None  # as admission leaves it: the job's end wakes it


def _answered(sessions: sessionmaker[Session], *, request_id: int) -> None:
    """Answer stored and commit decided, as the commit step leaves it."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.request_id == request_id).values(status="done"))
        session.add(
            Answer(
                request_id=request_id,
                model=SMOL,
                model_index=0,
                output="Paris.",
                embedding_bits=bytes(48),
                salt=bytes(32),
                seed=1,
                commitment=hashlib.sha256(f"c:{request_id}:0".encode()).digest(),
            )
        )


def _past_the_commit_grace(
    sessions: sessionmaker[Session], binding: CoordinatorBinding, *, commit_status: str
) -> tuple[datetime, datetime]:
    """Request 1 answered, our commit in the outbox with ``commit_status``, no seat of ours
    reported; passes before its commit deadline and just past the grace, where the request
    must still wait. Returns that moment and the reveal deadline."""
    _admitted_request(sessions, request_id=1)
    _answered(sessions, request_id=1)
    _commit_sent(sessions, request_id=1, status=commit_status)
    with sessions() as session:
        request = session.get_one(Request, 1)
    late = request.commit_deadline + timedelta(seconds=COMMIT_LANDING_GRACE_S + 1)
    advance_requests(sessions, CTX, binding, request.commit_deadline - timedelta(seconds=5))
    advance_requests(sessions, CTX, binding, late)
    assert _phase(sessions, 1) != "skipped"
    return late, request.reveal_deadline


def _commit_sent(sessions: sessionmaker[Session], *, request_id: int, status: str) -> None:
    """Our commit in the outbox, broadcast (``sent``) or with its receipt (``confirmed``)."""
    with sessions.begin() as session:
        enqueue_tx(
            session,
            kind="commit",
            request_id=request_id,
            from_address=ALICE,
            to_address=COORDINATOR,
            data=b"\x01",
        )
        mined = {"receipt_block": 20} if status == "confirmed" else {}
        session.execute(
            update(OutgoingTx)
            .where(OutgoingTx.request_id == request_id, OutgoingTx.kind == "commit")
            .values(status=status, nonce=0, tx_hash=b"\x02" * 32, **mined)
        )
        wake_requests(session.connection(), [request_id], "job")  # as the job's end does


def _run_job(engine: Engine, kind: str, result: dict[str, object]) -> None:
    model = SMOL if kind == "inference" else MINILM
    with engine.begin() as conn:
        (job,) = claim_jobs(conn, worker_id="w1", kinds=[kind], models=[model])  # type: ignore[list-item]
    with engine.begin() as conn:
        complete_job(conn, job_id=job.id, worker_id="w1", result=result)


def _phase(sessions: sessionmaker[Session], request_id: int) -> str:
    with sessions() as session:
        return str(session.scalar(select(Request.phase).where(Request.id == request_id)))


def _job_kinds(sessions: sessionmaker[Session], request_id: int) -> list[str]:
    with sessions() as session:
        query = select(Job.kind).where(Job.request_id == request_id).order_by(Job.id)
        return [str(k) for k in session.scalars(query)]
