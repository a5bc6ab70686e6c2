"""An embedding worker with several lanes (claim-run-record loops over one model): every
job embedded once with the bits a lone encoder gives, verifications still first, and a
killed worker's claims, one per lane, back in the queue for another worker. The same with
the model in a process of its own (``--embed-process``, a GPU worker's default): its
crashes and its death.

Real ``oracle worker`` processes on the CPU, a real database and a real model.
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

import psutil
import pytest
from sqlalchemy import Engine, text

from oracle.store.maintenance import maintain_queue
from oracle.store.queue import PRIORITY_EMBEDDING, PRIORITY_VERIFICATION, NewJob, enqueue_jobs
from oracle.store.workers import ready_models

pytestmark = pytest.mark.slow

MINILM = "all-MiniLM-L6-v2"
LANES = 3
CLAIM = 8
LEASE_S = 3.0
TIMEOUT_S = 240.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.05)


class _Worker:
    def __init__(self, database_url: str, log: Path, apart: bool) -> None:
        command = [
            sys.executable, "-m", "oracle.cli", "worker", "--role", "embedding",
            "--model", MINILM, "--threads", "1", "--lease-s", str(LEASE_S),
            "--embed-lanes", str(LANES), "--embed-claim", str(CLAIM), "--embed-batch", "4",
            "--embed-process" if apart else "--no-embed-process",
        ]  # fmt: skip
        self.log_path = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ORACLE_DATABASE_URL": database_url},
            )

    def runner_pid(self) -> int:
        """The model's process (``--embed-process``): the worker's child that multiprocessing
        spawned (beside it runs multiprocessing's resource tracker)."""
        children = psutil.Process(self.process.pid).children()
        (runner,) = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        return int(runner.pid)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def start_worker(
    database_url: str, db_engine: Engine, tmp_path: Path
) -> Iterator[Callable[..., _Worker]]:
    started: list[_Worker] = []

    def start(*, apart: bool = False) -> _Worker:
        worker = _Worker(database_url, tmp_path / f"worker{len(started)}.log", apart)
        started.append(worker)

        def ready() -> bool:
            assert worker.process.poll() is None, worker.log_path.read_text()
            with db_engine.connect() as conn:
                return ready_models(conn).get(MINILM, 0) > 0

        _wait_for(ready, "the embedding worker to load")
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


def _enqueue(engine: Engine, texts: list[Any]) -> list[int]:
    """Embedding jobs of these texts (a text that is not a string makes a malformed job)."""
    deadline = datetime.now(UTC) + timedelta(minutes=10)
    jobs = [
        NewJob(
            kind="embedding",
            model=MINILM,
            priority=PRIORITY_EMBEDDING,
            deadline=deadline,
            payload={"text": t},
        )
        for t in texts
    ]
    with engine.begin() as conn:
        return enqueue_jobs(conn, jobs)


def _jobs(engine: Engine, ids: list[int]) -> dict[int, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, attempts, result, finished_at FROM jobs WHERE id = ANY(:ids)"),
            {"ids": ids},
        ).all()
    return {int(row.id): row for row in rows}


def _count(engine: Engine, status: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM jobs WHERE status = :status"), {"status": status}
            ).scalar_one()
        )


@pytest.mark.parametrize("apart", [False, True], ids=["one process", "model apart"])
def test_lanes_embed_each_job_once_as_a_lone_encoder_would_and_verifications_go_first(
    db_engine: Engine, start_worker: Callable[..., _Worker], apart: bool
) -> None:
    from oracle.engine.embedder import Embedder

    start_worker(apart=apart)
    texts = [f"The capital of country number {i} is city number {i * 7}." for i in range(300)]
    embedding_ids = _enqueue(db_engine, texts)
    _wait_for(lambda: _count(db_engine, "done") >= CLAIM, "the first batch")
    # the verifications arrive while the embeddings not yet claimed are held back (FOR
    # UPDATE: no lane can take them meanwhile): the next claim must take them first
    with db_engine.begin() as conn:
        waiting = [
            int(i)
            for i in conn.execute(
                text("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id FOR UPDATE")
            ).scalars()
        ]
        verification_ids = enqueue_jobs(
            conn,
            [
                NewJob(
                    kind="verification",
                    model=MINILM,
                    priority=PRIORITY_VERIFICATION,
                    deadline=datetime.now(UTC) + timedelta(minutes=10),
                    payload={"text": f"A revealed answer, number {i}."},
                )
                for i in range(3)
            ],
        )
    assert len(waiting) > LANES * CLAIM  # enough left for the order to show
    ids = embedding_ids + verification_ids
    _wait_for(lambda: _count(db_engine, "done") == len(ids), "every job")

    jobs = _jobs(db_engine, ids)
    assert {(j.status, j.attempts) for j in jobs.values()} == {("done", 1)}
    assert {j.result["batch"] for j in jobs.values()} <= set(range(1, CLAIM + 1))
    assert all("embedder_tokens" in jobs[i].result for i in verification_ids)
    lone = Embedder(MINILM, threads=1, batch_size=4)
    verification_texts = [f"A revealed answer, number {i}." for i in range(3)]
    expected = lone.embed(texts + verification_texts)
    # each job has its own text's bits (another text's differ in a hundred or more; forward
    # passes grouped otherwise may flip a component within rounding of zero)
    distances = [_bits_apart(jobs[i].result["bits"], b) for i, b in zip(ids, expected, strict=True)]
    assert max(distances) <= 2, distances
    # only batches other lanes claimed alongside the verifications' can run before them
    verified_at = max(jobs[i].finished_at for i in verification_ids)
    overtaking = [i for i in waiting if jobs[i].finished_at < verified_at]
    assert len(overtaking) <= (LANES - 1) * CLAIM


def _reclaimed(engine: Engine) -> bool:
    """The queue's upkeep has run, and no job is held any more."""
    maintain_queue(engine)
    return _count(engine, "running") == 0


def _bits_apart(hex_bits: str, expected: bytes) -> int:
    return sum(
        bin(a ^ b).count("1") for a, b in zip(bytes.fromhex(hex_bits), expected, strict=True)
    )


def test_a_killed_worker_s_claims_go_back_to_the_queue_and_another_worker_ends_them(
    db_engine: Engine, start_worker: Callable[..., _Worker]
) -> None:
    first = start_worker()
    texts = [f"An answer that needs embedding, number {i}." for i in range(400)]
    ids = _enqueue(db_engine, texts)
    # a batch runs while the other lanes hold their claims, waiting for their turn
    _wait_for(lambda: _count(db_engine, "running") > CLAIM, "several lanes holding claims")
    first.kill()
    held = [i for i, j in _jobs(db_engine, ids).items() if j.status == "running"]
    assert len(held) > CLAIM

    _wait_for(lambda: _reclaimed(db_engine), "the killed worker's leases to lapse")
    start_worker()
    _wait_for(lambda: _count(db_engine, "done") == len(ids), "every job")
    jobs = _jobs(db_engine, ids)
    assert {jobs[i].attempts for i in held} == {2}  # claimed again, once
    assert {j.status for j in jobs.values()} == {"done"}


def test_a_crash_in_the_model_s_process_fails_only_the_job_that_causes_it(
    db_engine: Engine, start_worker: Callable[..., _Worker]
) -> None:
    """The runner raises inside the child on a payload that is not text: the batch comes
    back crashed, its jobs run one at a time there, and only that job fails."""
    start_worker(apart=True)
    good = _enqueue(db_engine, [f"A good answer, number {i}." for i in range(CLAIM - 1)])
    (bad,) = _enqueue(db_engine, [42])
    _wait_for(lambda: _count(db_engine, "done") + _count(db_engine, "dead") == CLAIM, "all")

    jobs = _jobs(db_engine, [*good, bad])
    assert {jobs[i].status for i in good} == {"done"}
    with db_engine.connect() as conn:
        status, error = conn.execute(
            text("SELECT status, last_error FROM jobs WHERE id = :id"), {"id": bad}
        ).one()
    assert status == "dead"
    assert "TypeError" in error and "payload text is a int" in error


def test_when_the_model_s_process_dies_its_batch_goes_back_and_the_worker_stops(
    db_engine: Engine, start_worker: Callable[..., _Worker]
) -> None:
    first = start_worker(apart=True)
    texts = [f"An answer that needs embedding, number {i}." for i in range(400)]
    ids = _enqueue(db_engine, texts)
    _wait_for(lambda: _count(db_engine, "running") > CLAIM, "several lanes holding claims")
    held = {i for i, j in _jobs(db_engine, ids).items() if j.status == "running"}
    os.kill(first.runner_pid(), signal.SIGKILL)

    assert first.process.wait(timeout=TIMEOUT_S) != 0
    log = first.log_path.read_text()
    assert "job runner process is gone" in log, log
    # every claim a lane held went back at once with the reason (none failed for good),
    # but for a batch that was recorded before the kill
    with db_engine.connect() as conn:
        returned = {
            int(row.id): row.last_error
            for row in conn.execute(
                text("SELECT id, last_error FROM jobs WHERE status = 'queued' AND attempts = 1")
            )
        }
    jobs = _jobs(db_engine, ids)
    assert {j.status for j in jobs.values()} <= {"done", "queued"}
    assert {i for i in held if jobs[i].status != "done"} <= returned.keys()
    assert len(returned) >= CLAIM
    assert all("job runner process is gone" in error for error in returned.values())

    start_worker(apart=True)
    _wait_for(lambda: _count(db_engine, "done") == len(ids), "every job")
    jobs = _jobs(db_engine, ids)
    assert {j.status for j in jobs.values()} == {"done"}
    assert {jobs[i].attempts for i in returned} == {2}


def test_a_model_that_cannot_load_in_its_own_process_fails_the_worker_with_its_own_error() -> None:
    from oracle.engine.runner_process import RunnerProcess
    from oracle.engine.worker import WorkerConfig
    from oracle.errors import UnknownEmbeddingModel

    config = WorkerConfig(
        database_url="postgresql://unused",
        role="embedding",
        model="no-such-embedder",
        embed_process=True,
    )
    with pytest.raises(UnknownEmbeddingModel) as raised:
        RunnerProcess(config)
    assert raised.value.model == "no-such-embedder"
    assert MINILM in str(raised.value)  # the known models, as the worker would print them


def test_a_killed_worker_leaves_no_model_process_behind(
    db_engine: Engine, start_worker: Callable[..., _Worker]
) -> None:
    """What a supervisor does to a wedged worker (SIGKILL): its model's process ends too,
    so that the worker started in its place does not load the model twice."""
    worker = start_worker(apart=True)
    runner = psutil.Process(worker.runner_pid())
    ids = _enqueue(db_engine, [f"An answer, number {i}." for i in range(400)])
    _wait_for(lambda: _count(db_engine, "running") > 0, "a batch running")
    worker.kill()
    _wait_for(lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE, "exit")

    _wait_for(lambda: _reclaimed(db_engine), "the killed worker's leases to lapse")
    start_worker(apart=True)
    _wait_for(lambda: _count(db_engine, "done") == len(ids), "every job")
