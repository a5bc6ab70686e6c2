"""Leases with heartbeats: a worker killed mid-job loses the job to another worker.

The job runs to completion once, by the second worker; the dead worker's late answer and
heartbeat are refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from oracle.engine.worker import make_worker_id
from oracle.store.maintenance import maintain_queue
from oracle.store.queue import LeaseLost, complete_job, enqueue_job, heartbeat
from oracle.store.workers import ready_models

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
LEASE_S = 3.0
TIMEOUT_S = 240.0
# about 300 tokens of output at any temperature: several seconds of work on one thread
LONG_JOB = {
    "prompt": "Write the numbers from 1 to 500, separated by commas.",
    "temperature_milli": 700,
    "max_tokens": 300,
    "seed": 1,
}


def _wait_for(condition: Callable[[], bool], what: str, poll_s: float = 0.2) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(poll_s)


class Workers:
    """``oracle worker`` processes with a short lease, each logging to its own file."""

    def __init__(self, database_url: str, log_dir: Path) -> None:
        self._database_url = database_url
        self._log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self._log_dir / f"worker{len(self.processes)}.log"
        command = [
            sys.executable, "-m", "oracle.cli", "worker", "--model", SMOLLM,
            "--threads", "1", "--lease-s", str(LEASE_S),
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ORACLE_DATABASE_URL": self._database_url},
            )
        self.processes.append(process)
        return process

    def log(self, index: int) -> str:
        return (self._log_dir / f"worker{index}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(database_url, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def _job(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, worker_id, attempts, result, last_error FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()


def _ready(engine: Engine, count: int) -> Callable[[], bool]:
    def check() -> bool:
        with engine.connect() as conn:
            return ready_models(conn).get(SMOLLM, 0) == count

    return check


def _a_worker_running_a_long_job(
    engine: Engine, workers: Workers
) -> tuple[subprocess.Popen[bytes], str, int]:
    """A new worker, once it has loaded its model, and the long job it claimed."""
    process = workers.start()
    worker_id = make_worker_id(SMOLLM, process.pid)
    _wait_for(_ready(engine, 1), "the first worker to load its model")
    with engine.begin() as conn:
        job_id = enqueue_job(
            conn,
            kind="inference",
            model=SMOLLM,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(minutes=5),
            payload=LONG_JOB,
        )
    _wait_for(lambda: _job(engine, job_id).status == "running", "the claim", poll_s=0.02)
    return process, worker_id, job_id


def _reclaimed(engine: Engine, job_id: int) -> Callable[[], bool]:
    """Whether the queue's maintenance has given the job back after its lease ran out."""

    def check() -> bool:
        maintain_queue(engine)
        return bool(_job(engine, job_id).status == "queued")

    return check


def test_a_killed_worker_loses_its_job_to_another_that_finishes_it_once(
    db_engine: Engine, workers: Workers
) -> None:
    first, first_id, job_id = _a_worker_running_a_long_job(db_engine, workers)
    assert _job(db_engine, job_id).worker_id == first_id

    first.send_signal(signal.SIGKILL)  # mid-job: no result, no goodbye
    assert first.wait(timeout=30) == -signal.SIGKILL

    _wait_for(_reclaimed(db_engine, job_id), "the lease to run out and the job to go back")
    back = _job(db_engine, job_id)
    assert (back.worker_id, back.attempts, back.result) == (None, 1, None)
    assert f"worker {first_id} stopped heartbeating" in back.last_error

    late = {"text": "a late answer", "completion_tokens": 1, "elapsed_s": 1.0}
    with pytest.raises(LeaseLost), db_engine.begin() as conn:
        heartbeat(conn, job_id=job_id, worker_id=first_id, lease_s=LEASE_S)
    with pytest.raises(LeaseLost), db_engine.begin() as conn:
        complete_job(conn, job_id=job_id, worker_id=first_id, result=late)

    second = workers.start()
    second_id = make_worker_id(SMOLLM, second.pid)
    _wait_for(lambda: _job(db_engine, job_id).status == "done", "the second worker's answer")
    done = _job(db_engine, job_id)
    assert (done.worker_id, done.attempts) == (second_id, 2)
    assert done.result["completion_tokens"] > 0 and done.result["text"] != late["text"]

    with pytest.raises(LeaseLost), db_engine.begin() as conn:  # still refused, now it is done
        complete_job(conn, job_id=job_id, worker_id=first_id, result=late)
    assert _job(db_engine, job_id).result == done.result
    workers.stop_all()
    assert workers.log(1).count("job done") == 1
    assert "job done" not in workers.log(0)


def test_a_frozen_worker_that_wakes_after_its_lease_has_its_answer_refused(
    db_engine: Engine, workers: Workers
) -> None:
    first, first_id, job_id = _a_worker_running_a_long_job(db_engine, workers)
    first.send_signal(signal.SIGSTOP)  # a long GC pause, a swapped-out VM: alive but silent
    try:
        _wait_for(_reclaimed(db_engine, job_id), "the lease to run out")
        second = workers.start()
        _wait_for(lambda: _job(db_engine, job_id).status == "done", "the second worker's answer")
    finally:
        first.send_signal(signal.SIGCONT)
    done = _job(db_engine, job_id)
    assert (done.worker_id, done.attempts) == (make_worker_id(SMOLLM, second.pid), 2)

    _wait_for(lambda: "result refused: lease lost" in workers.log(0), "the late answer")
    assert _job(db_engine, job_id).result == done.result  # the late answer changed nothing
    assert first.poll() is None  # and the worker lives on to take other jobs
    assert first_id in workers.log(0)
