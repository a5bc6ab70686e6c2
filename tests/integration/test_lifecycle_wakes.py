"""News reaches the lifecycle as wakes written with it: by the listener for the chain
events it stores, by the queue for the jobs that end; a pass looks at exactly those
requests (and those whose next check has come), and takes their wakes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.listener import Listener
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.store.models import Request, RequestWake
from oracle.store.queue import claim_jobs, enqueue_job, fail_job
from tests.support.protocol import EMBEDDING_MODEL, MODEL, Protocol


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    return Protocol.deploy(chain.w3)


def _wakes(sessions: sessionmaker[Session]) -> list[tuple[int, str]]:
    with sessions() as session:
        rows = session.execute(select(RequestWake.request_id, RequestWake.reason))
        return sorted((int(r.request_id), r.reason) for r in rows)


def test_stored_chain_events_and_ended_jobs_wake_their_requests(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    (node,) = protocol.register_oracles(1)
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    listener = Listener(w3=chain.w3, session_factory=sessions, binding=binding)
    listener.start_block = chain.w3.eth.block_number + 1
    first, second = protocol.request(quorum=2), protocol.request(quorum=2)
    assert listener.poll_once() == 2
    assert _wakes(sessions) == [(first, "chain event"), (second, "chain event")]

    ctx = NodeContext(
        address=node.lower(),
        coordinator=protocol.coordinator.address.lower(),
        models={"not-served-here": ModelProfile(name="not-served-here", context_tokens=4096)},
        embedding_models=[EMBEDDING_MODEL],
    )
    assert advance_requests(sessions, ctx, binding) == 2  # both declined: no served model
    assert _wakes(sessions) == []
    assert advance_requests(sessions, ctx, binding) == 0  # settled by others, or at the deadline

    with db_engine.begin() as conn:  # a job of the first request ends (here: it fails for good)
        enqueue_job(
            conn,
            kind="inference",
            request_id=first,
            model=MODEL,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(minutes=5),
            payload={},
            max_attempts=1,
        )
    with db_engine.begin() as conn:
        (job,) = claim_jobs(conn, worker_id="w1", kinds=["inference"], models=[MODEL])
    with db_engine.begin() as conn:
        fail_job(conn, job_id=job.id, worker_id="w1", error="boom", retry_after_s=None)
    assert _wakes(sessions) == [(first, "job")]
    assert advance_requests(sessions, ctx, binding) == 1
    with sessions() as session:
        assert session.get_one(Request, first).phase == "skipped"
