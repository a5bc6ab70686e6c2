"""A lifecycle pass: which requests it steps, and what a step does once a job is done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.store import make_session_factory
from oracle.store.chain_state import apply_event
from oracle.store.models import Answer, Job, OutgoingTx, Request
from oracle.store.queue import claim_jobs, complete_job, enqueue_job
from tests.integration.test_chain_state import ALICE, at, requested

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
        apply_event(session, requested(2, at(11)))  # not admitted yet: always stepped

    def advance() -> int:
        return advance_requests(sessions, CTX, binding)

    assert advance() == 1  # request 2 only; request 1 waits for its inference
    assert _phase(sessions, 2) != "requested"

    _run_job(db_engine, "inference", {"text": "Paris.", "completion_tokens": 3})
    assert advance() == 1  # request 1 again: its step queues the embedding
    assert _job_kinds(sessions, 1) == ["inference", "embedding"]
    assert advance() == 0  # and waits for it

    _run_job(db_engine, "embedding", {"bits": "ab" * 48})
    assert advance() == 1
    with sessions() as session:
        answer = session.get(Answer, 1)
        assert answer is not None and answer.output == "Paris."
        commits = session.scalars(select(OutgoingTx.kind).where(OutgoingTx.request_id == 1))
        assert list(commits) == ["commit"]
    assert advance() == 1  # answered, waiting for seats: stepped on every pass from now on


def _admitted_request(sessions: sessionmaker[Session], *, request_id: int) -> None:
    with sessions.begin() as session:
        apply_event(session, requested(request_id, at(10)))
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
        )


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
