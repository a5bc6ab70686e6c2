"""A worker stuck past its job's deadline, where no clock check reaches (a hung C call).

The real model cannot be made to hang on cue, so the runner here blocks until told to
return; everything else (the worker, its heartbeat thread, the queue's upkeep) is real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from oracle.engine.worker import Worker, WorkerConfig
from oracle.errors import OracleError
from oracle.store.maintenance import maintain_queue
from oracle.store.models import JobKind
from oracle.store.queue import ClaimedJob, enqueue_job
from oracle.store.workers import presence

MODEL = "SmolLM2-135M-Instruct-Q4_1"
LEASE_S = 1.0
TIMEOUT_S = 60.0


class HungRunner:
    """Blocks in ``run`` until released, as a generation stuck inside llama.cpp would."""

    kinds: Sequence[JobKind] = ("inference",)
    batch_size = 1

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        self.entered.set()
        self.release.wait(TIMEOUT_S)
        return [{"text": "a late answer"} for _ in jobs]


@pytest.fixture
def hung_worker(database_url: str, db_engine: Engine) -> Iterator[tuple[Worker, HungRunner]]:
    runner = HungRunner()
    config = WorkerConfig(database_url=database_url, role="llm", model=MODEL, lease_s=LEASE_S)
    worker = Worker(config, runner, db_engine)
    thread = threading.Thread(target=worker.run, args=(worker.stopping.wait,), daemon=True)
    thread.start()
    try:
        yield worker, runner
    finally:
        runner.release.set()
        worker.stopping.set()
        thread.join(TIMEOUT_S)


def _wait_for(condition: Any, what: str) -> None:
    give_up = threading.Event()
    timer = threading.Timer(TIMEOUT_S, give_up.set)
    timer.start()
    try:
        while not condition():
            assert not give_up.wait(0.1), f"gave up waiting: {what}"
    finally:
        timer.cancel()


def _job(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, result, last_error FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()


def _silent_for_s(engine: Engine, worker: Worker) -> float:
    with engine.connect() as conn:
        return presence(conn, [worker.worker_id])[worker.worker_id].silent_for_s


def test_a_worker_stuck_past_a_deadline_loses_the_job_and_goes_silent_until_it_returns(
    db_engine: Engine, hung_worker: tuple[Worker, HungRunner]
) -> None:
    worker, runner = hung_worker
    with db_engine.begin() as conn:
        job_id = enqueue_job(
            conn,
            kind="inference",
            model=MODEL,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(seconds=3),  # claimed within a poll
            payload={},
        )
    assert runner.entered.wait(TIMEOUT_S)

    def buried() -> bool:
        maintain_queue(db_engine)
        return bool(_job(db_engine, job_id).status == "dead")

    _wait_for(buried, "the stuck job's lease to lapse and the job to be buried")
    assert _job(db_engine, job_id).last_error.endswith("stopped heartbeating, past the deadline")
    # no presence while stuck: the supervisor's cue to kill and restart it
    _wait_for(lambda: _silent_for_s(db_engine, worker) > 3 * LEASE_S, "presence to go silent")

    runner.release.set()  # the call returns at last: its answer is refused, the worker lives on
    _wait_for(lambda: _silent_for_s(db_engine, worker) < LEASE_S, "presence to come back")
    job = _job(db_engine, job_id)
    assert (job.status, job.result) == ("dead", None)
