"""Faults a worker must live through: a dropped database connection, a long job, a hung
generation, a bad item in a batch.

Each test runs real ``oracle worker`` processes with a short lease (heartbeats every
second) against a real database and a real model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

from oracle.engine.worker import make_worker_id
from oracle.store import make_engine
from oracle.store.queue import NewJob, enqueue_job, enqueue_jobs
from oracle.store.workers import live_workers, ready_models

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"
LEASE_S = 3.0
TIMEOUT_S = 240.0
# far more tokens than any of these tests waits for: the worker is killed at the end
ENDLESS_JOB = {
    "prompt": "Write the numbers from 1 to 5000, separated by commas.",
    "temperature_milli": 700,
    "max_tokens": 1500,
    "seed": 1,
}


def _wait_for(condition: Callable[[], bool], what: str, poll_s: float = 0.1) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(poll_s)


class Worker:
    """One ``oracle worker`` process, logging to a file, killed at the end of the test."""

    def __init__(self, database_url: str, model: str, log: Path) -> None:
        command = [
            sys.executable, "-m", "oracle.cli", "worker", "--model", model,
            "--threads", "1", "--lease-s", str(LEASE_S),
        ]  # fmt: skip
        self.log_path = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ORACLE_DATABASE_URL": database_url},
            )
        self.worker_id = make_worker_id(model, self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def start_worker(
    database_url: str, db_engine: Engine, tmp_path: Path
) -> Iterator[Callable[[str], Worker]]:
    """Starts a worker of a model and waits until it has announced itself."""
    started: list[Worker] = []

    def start(model: str) -> Worker:
        worker = Worker(database_url, model, tmp_path / f"worker{len(started)}.log")
        started.append(worker)

        def ready() -> bool:
            assert worker.process.poll() is None, worker.log()
            with db_engine.connect() as conn:
                return ready_models(conn).get(model, 0) > 0

        _wait_for(ready, f"{model} to load")
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


def _job(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text(
                """
                SELECT status, worker_id, attempts, result, last_error, heartbeat_at,
                       now() - heartbeat_at AS silent_for
                FROM jobs WHERE id = :id
                """
            ),
            {"id": job_id},
        ).one()


def _enqueue(engine: Engine, payload: dict[str, Any], deadline_s: float = 300.0) -> int:
    with engine.begin() as conn:
        return enqueue_job(
            conn,
            kind="inference",
            model=SMOLLM,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(seconds=deadline_s),
            payload=payload,
        )


def _running(engine: Engine, job_id: int) -> Callable[[], bool]:
    return lambda: bool(_job(engine, job_id).status == "running")


def test_the_lease_heartbeat_survives_a_connection_killed_mid_beat(
    db_engine: Engine, start_worker: Callable[[str], Worker]
) -> None:
    worker = start_worker(SMOLLM)
    job_id = _enqueue(db_engine, ENDLESS_JOB)
    _wait_for(_running(db_engine, job_id), "the claim", poll_s=0.02)

    # hold the job's row so that the next heartbeat blocks, then cut that connection
    with db_engine.connect() as holder:
        holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        mine = holder.scalar(text("SELECT pg_backend_pid()"))

        def blocked_beat() -> list[int]:
            with db_engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"),
                    {"me": mine},
                )
                return [int(r.pid) for r in rows]

        _wait_for(lambda: bool(blocked_beat()), "a heartbeat to wait on the row lock")
        with db_engine.connect() as conn:
            for pid in blocked_beat():
                assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        holder.rollback()
    with db_engine.connect() as conn:
        cut_at = conn.scalar(text("SELECT now()"))

    def beaten_again() -> bool:
        job = _job(db_engine, job_id)
        assert (job.status, job.worker_id) == ("running", worker.worker_id), "the job ended first"
        return bool(job.heartbeat_at > cut_at)

    _wait_for(beaten_again, "the heartbeat to renew the lease after the connection was cut")
    assert _job(db_engine, job_id).attempts == 1
    assert worker.process.poll() is None


def test_a_worker_stays_present_while_a_job_outlasts_the_presence_window(
    db_engine: Engine, start_worker: Callable[[str], Worker]
) -> None:
    worker = start_worker(SMOLLM)
    job_id = _enqueue(db_engine, ENDLESS_JOB)
    _wait_for(_running(db_engine, job_id), "the claim", poll_s=0.02)
    window_s = 2 * LEASE_S / 3  # two heartbeats
    checked_from = time.monotonic() + 2 * window_s
    while time.monotonic() < checked_from + window_s:  # the job runs for ever, the worker lives
        with db_engine.connect() as conn:
            live = live_workers(conn, alive_within_s=window_s).get(("llm", SMOLLM), set())
        assert _job(db_engine, job_id).status == "running"
        if time.monotonic() > checked_from:
            assert worker.worker_id in live
        time.sleep(0.2)


def test_a_ready_worker_has_exempted_its_start_up_objects_from_collection(
    start_worker: Callable[[str], Worker],
) -> None:
    """Before it serves, the worker freezes what loading left alive (``settle_heap``), so
    that Python's full collections no longer walk the model's and the modules' objects."""
    worker = start_worker(SMOLLM)
    settled = re.findall(r"heap settled objects_exempt_from_collection=(\d+)", worker.log())
    assert len(settled) == 1, worker.log()
    assert int(settled[0]) > 10_000


def test_a_generation_still_running_at_its_deadline_is_stopped_and_fails_with_the_reason(
    db_engine: Engine, start_worker: Callable[[str], Worker]
) -> None:
    worker = start_worker(SMOLLM)
    job_id = _enqueue(db_engine, ENDLESS_JOB, deadline_s=3.0)
    _wait_for(lambda: _job(db_engine, job_id).status not in ("queued", "running"), "an outcome")
    job = _job(db_engine, job_id)
    assert (job.status, job.attempts, job.result) == ("dead", 1, None)  # not retried
    assert "cut short at its deadline" in job.last_error
    assert "stopped after" in job.last_error
    # and the worker goes on to serve the next job
    quick = _enqueue(db_engine, {**ENDLESS_JOB, "max_tokens": 4})
    _wait_for(lambda: _job(db_engine, quick).status == "done", "the next job")
    assert worker.process.poll() is None


def test_one_bad_item_fails_alone_and_the_rest_of_its_batch_completes(
    db_engine: Engine, start_worker: Callable[[str], Worker]
) -> None:
    worker = start_worker(MINILM)
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    payloads: list[dict[str, Any]] = [{"text": f"answer number {i}"} for i in range(6)]
    payloads.insert(3, {"txt": "a job from a node of another version"})
    with db_engine.begin() as conn:  # one INSERT, one wake-up: one batch
        ids = enqueue_jobs(
            conn,
            [
                NewJob(kind="embedding", model=MINILM, priority=1, deadline=deadline, payload=p)
                for p in payloads
            ],
        )

    def finished() -> bool:
        return all(_job(db_engine, i).status in ("done", "dead") for i in ids)

    _wait_for(finished, "every job to finish")
    jobs = {i: _job(db_engine, i) for i in ids}
    bad = ids[3]
    assert (jobs[bad].status, jobs[bad].attempts) == ("dead", 1)
    assert "KeyError: 'text'" in jobs[bad].last_error
    good = [jobs[i] for i in ids if i != bad]
    assert [(j.status, j.attempts) for j in good] == [("done", 1)] * 6
    assert all(j.result["batch"] == 1 for j in good)  # run again one at a time
    assert "running its jobs one at a time" in worker.log()


def test_a_worker_waits_out_a_database_that_refuses_connections(
    db_engine: Engine,
    postgres_server_url: URL,
    database_url: str,
    start_worker: Callable[[str], Worker],
) -> None:
    worker = start_worker(SMOLLM)
    name = make_url(database_url).database
    server = make_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as admin:
            admin.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                admin.execute(
                    text(
                        """
                        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                        WHERE datname = :name
                        """
                    ),
                    {"name": name},
                )
                _wait_for(
                    lambda: worker.process.poll() is not None or "database error" in worker.log(),
                    "the worker to meet the outage",
                )
                time.sleep(2 * LEASE_S)  # several beats and claims into the outage
            finally:
                admin.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        server.dispose()
    assert worker.process.poll() is None, worker.log()
    job_id = _enqueue(db_engine, {**ENDLESS_JOB, "max_tokens": 4})
    _wait_for(lambda: _job(db_engine, job_id).status == "done", "the job, after the outage")
    assert _job(db_engine, job_id).worker_id == worker.worker_id
    with db_engine.connect() as conn:
        assert worker.worker_id in live_workers(conn).get(("llm", SMOLLM), set())
