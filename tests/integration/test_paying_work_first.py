"""A flood of cheap requests does not starve a paying one (issue 8, point 6), tried as an
attacker would against one node: 60 requests at the minimum fee asking for 256 tokens
each, then one request paying 0.1 ETH whose deadline it can meet only when served first.

Before: admission counted every queued token ahead of the paying request and declined it,
and the queue ran the flood first by deadline. Now only the work the claim order runs
before a request delays it, and that order puts the better-paying job first.

Real Postgres, the lifecycle driver (admission and every later step), the real queue, and
real SmolLM2 and MiniLM workers; anvil only for the coordinator's calldata. It asserts
order and outcomes, never durations.
"""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.domain.events import RequestedEvent
from oracle.engine.worker import EmbeddingJobRunner, LlmJobRunner, Worker, WorkerConfig
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.store import make_session_factory
from oracle.store.chain_state import apply_event
from oracle.store.models import Job, OutgoingTx, Request
from tests.integration.test_chain_state import ALICE, at, requested

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"
COORDINATOR = "0x" + "c0" * 20
MIN_FEE_PER_SEAT = 10**12  # the coordinator's default minimum
PAYING_FEE = 10**17  # 0.1 ETH
FLOOD = 60
CTX = NodeContext(
    address=ALICE,
    coordinator=COORDINATOR,
    # the default price: the flood pays enough per token to pass it, so the queue must cope
    models={SMOL: ModelProfile(name=SMOL, context_tokens=4096, price_per_token_wei=10**9)},
    embedding_models=[MINILM],
)
DECLINED_BEHIND = re.compile(
    r"^declined: cannot finish before the commit deadline: needs about [\d.]+ s of inference "
    r"behind (\d+) running or better-paying jobs, [\d.]+ s left after embedding and commit$"
)


def test_a_flood_of_cheap_requests_does_not_delay_one_that_pays(
    db_engine: Engine, database_url: str, chain: Anvil
) -> None:
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    llm = worker(database_url, db_engine, "llm", SMOL)
    embedder = worker(database_url, db_engine, "embedding", MINILM)

    # the flood: 60 requests at the minimum fee, 256 tokens each, two minutes to commit
    flood = range(1, FLOOD + 1)
    store(sessions, [request(i, fee=MIN_FEE_PER_SEAT, commit_in_s=120) for i in flood])
    assert advance_requests(sessions, CTX, binding) == FLOOD
    admitted = [i for i in flood if phase(sessions, i) == "committing"]
    declined = {i: skip_reason(sessions, i) for i in flood if phase(sessions, i) == "skipped"}
    assert 0 < len(admitted) < FLOOD and len(admitted) + len(declined) == FLOOD
    for reason in declined.values():  # each behind every cheap job admitted before it
        match = DECLINED_BEHIND.match(reason)
        assert match is not None, reason
        assert int(match.group(1)) == len(admitted)

    # the paying request: one minute to commit, less than the admitted flood takes
    paying = FLOOD + 1
    store(sessions, [request(paying, fee=PAYING_FEE, commit_in_s=60)])
    assert advance_requests(sessions, CTX, binding) == 1
    assert phase(sessions, paying) == "committing"

    # one worker takes jobs one at a time: the paying one first, though queued last
    assert llm.run_once()
    assert inference_status(sessions) == {paying: "done"} | dict.fromkeys(admitted, "queued")
    advance_requests(sessions, CTX, binding)  # its inference ended: the embedding is queued
    assert embedder.run_once()
    advance_requests(sessions, CTX, binding)
    with sessions() as session:
        commits = session.scalars(select(OutgoingTx.request_id).where(OutgoingTx.kind == "commit"))
        assert list(commits) == [paying]  # answered and committed before any cheap request


# --- helpers -------------------------------------------------------------------------


def worker(database_url: str, engine: Engine, role: str, model: str) -> Worker:
    """A real worker with its model loaded; the test calls ``run_once`` to take one batch."""
    config = WorkerConfig(
        database_url=database_url,
        role="llm" if role == "llm" else "embedding",
        model=model,
        threads=2,
        lease_s=600.0,
    )
    runner = LlmJobRunner(model, 2) if role == "llm" else EmbeddingJobRunner(model, "cpu", 1)
    return Worker(config, runner, engine)


def request(request_id: int, *, fee: int, commit_in_s: int) -> RequestedEvent:
    commit_deadline = int(time.time()) + commit_in_s
    return dataclasses.replace(
        requested(request_id, at(10 + request_id, log_index=request_id)),
        # one length for every cheap prompt: a job's work counts its prompt, so the flood
        # pays one price per token
        prompt=f"Tell me a long story about the number {request_id:02d}."
        if fee == MIN_FEE_PER_SEAT
        else "What is the capital of France? Answer in one short sentence.",
        quorum=1,
        max_tokens=256,
        fee_wei=fee,
        commit_deadline=commit_deadline,
        reveal_deadline=commit_deadline + 30,
    )


def store(sessions: sessionmaker[Session], events: list[RequestedEvent]) -> None:
    """As the listener stores the blocks that announced them."""
    with sessions.begin() as session:
        for event in events:
            apply_event(session, event)


def phase(sessions: sessionmaker[Session], request_id: int) -> str:
    with sessions() as session:
        return str(session.scalar(select(Request.phase).where(Request.id == request_id)))


def skip_reason(sessions: sessionmaker[Session], request_id: int) -> str:
    with sessions() as session:
        return str(session.scalar(select(Request.skip_reason).where(Request.id == request_id)))


def inference_status(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        rows = session.execute(select(Job.request_id, Job.status).where(Job.kind == "inference"))
        return {int(request_id): str(status) for request_id, status in rows}
