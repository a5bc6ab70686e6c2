"""A worker process: one model loaded once, jobs claimed from Postgres until told to stop.

The node's engines start these as subprocesses (``oracle worker ...``); the same command
runs them on other machines, sharing only the database with the node.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal, Protocol

from sqlalchemy import Engine

from oracle.errors import OracleError
from oracle.store import make_engine
from oracle.store.models import JobKind
from oracle.store.notify import NotificationWaiter
from oracle.store.queue import (
    JOBS_CHANNEL,
    ClaimedJob,
    LeaseLost,
    backoff_s,
    claim_jobs,
    complete_jobs,
    fail_job,
    heartbeat_jobs,
)
from oracle.store.workers import announce_worker, retire_worker, worker_heartbeat

logger = logging.getLogger(__name__)

Role = Literal["llm", "embedding"]
LEASE_S = 30.0
PRESENCE_HEARTBEAT_S = 5.0
HEARTBEAT_S = 5.0
EMBED_BATCH = 128
"""Texts an embedding worker claims at once: one encode call sorts them by length, so a
larger claim pads less (bench/embed.py: 128 gives about 1.3x the throughput of 32)."""


class RetryLater(OracleError):
    """The job failed for a reason that may pass; it goes back to the queue."""


class JobRunner(Protocol):
    """Runs a batch of claimed jobs of one model and returns one result per job (or error)."""

    kinds: Sequence[JobKind]
    batch_size: int

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    database_url: str
    role: Role
    model: str
    threads: int = 1
    poll_interval_s: float = 1.0
    lease_s: float = LEASE_S
    device: str = "cpu"


class LlmJobRunner:
    kinds: Sequence[JobKind] = ("inference",)
    batch_size = 1

    def __init__(self, model: str, threads: int) -> None:
        from oracle.engine.llm import LlmRunner

        self._runner = LlmRunner.from_registry(model, n_threads=threads)

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        return [self._run_one(job) for job in jobs]

    def _run_one(self, job: ClaimedJob) -> Mapping[str, Any] | OracleError:
        started = time.perf_counter()
        try:
            generation = self._runner.generate(
                prompt=str(job.payload["prompt"]),
                temperature_milli=int(job.payload["temperature_milli"]),
                max_tokens=int(job.payload["max_tokens"]),
                seed=int(job.payload["seed"]),
            )
        except OracleError as exc:
            return exc
        return {
            "text": generation.text,
            "completion_tokens": generation.completion_tokens,
            "prompt_tokens": generation.prompt_tokens,
            "finish_reason": generation.finish_reason,
            "seed": generation.seed,
            "model": generation.model,
            "elapsed_s": round(time.perf_counter() - started, 4),
        }


class EmbeddingJobRunner:
    kinds: Sequence[JobKind] = ("verification", "embedding")
    batch_size = EMBED_BATCH

    def __init__(self, model: str, device: str, threads: int) -> None:
        from oracle.engine.embedder import Embedder

        self._embedder = Embedder(model, device=device, threads=threads)
        # torch initialises lazily: pay for it before announcing readiness, not on a deadline
        self._embedder.embed(["warm-up"])

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        started = time.perf_counter()
        bits = self._embedder.embed([str(job.payload["text"]) for job in jobs])
        elapsed = round(time.perf_counter() - started, 4)
        return [
            {
                "bits": b.hex(),
                "model": self._embedder.model,
                "elapsed_s": elapsed,
                "batch": len(jobs),
            }
            for b in bits
        ]


def make_worker_id(model: str, pid: int | None = None, hostname: str | None = None) -> str:
    """The id a worker claims jobs under (``jobs.worker_id``): host, process and model."""
    host = socket.gethostname() if hostname is None else hostname
    return f"{host}:{os.getpid() if pid is None else pid}:{model}"


def make_runner(config: WorkerConfig) -> JobRunner:
    if config.role == "llm":
        return LlmJobRunner(config.model, config.threads)
    return EmbeddingJobRunner(config.model, config.device, config.threads)


class Worker:
    """Claims, runs and completes jobs; heartbeats while a batch runs."""

    def __init__(self, config: WorkerConfig, runner: JobRunner, engine: Engine) -> None:
        self.config = config
        self.runner = runner
        self.engine = engine
        self.worker_id = make_worker_id(config.model)
        self.stopping = threading.Event()
        self._heartbeat: _Heartbeat | None = None

    def run(self, wait_for_work: Callable[[float], object]) -> None:
        self._announce()
        logger.info("worker ready", extra={"worker_id": self.worker_id, "role": self.config.role})
        last_beat = time.monotonic()
        try:
            while not self.stopping.is_set():
                if not self.run_once():
                    wait_for_work(self.config.poll_interval_s)
                if time.monotonic() - last_beat > PRESENCE_HEARTBEAT_S:
                    with self.engine.begin() as conn:
                        worker_heartbeat(conn, self.worker_id)
                    last_beat = time.monotonic()
        finally:
            with self.engine.begin() as conn:
                retire_worker(conn, self.worker_id)
        logger.info("worker stopped", extra={"worker_id": self.worker_id})

    def _announce(self) -> None:
        with self.engine.begin() as conn:
            announce_worker(
                conn,
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                role=self.config.role,
                model=self.config.model,
            )

    def run_once(self) -> bool:
        """Claim and run one batch; False when there was nothing to do."""
        with self.engine.begin() as conn:
            jobs = claim_jobs(
                conn,
                worker_id=self.worker_id,
                kinds=self.runner.kinds,
                models=[self.config.model],
                limit=self.runner.batch_size,
                lease_s=self.config.lease_s,
            )
        if not jobs:
            return False
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self)
        with self._heartbeat.covering([j.id for j in jobs]):
            try:
                outcomes = self.runner.run(jobs)
            except Exception as exc:  # a crash in the model must not kill the worker
                logger.exception("job batch crashed", extra={"worker_id": self.worker_id})
                outcomes = [RetryLater(f"{type(exc).__name__}: {exc}") for _ in jobs]
        self._finish_batch(jobs, outcomes)
        return True

    def _finish_batch(
        self, jobs: Sequence[ClaimedJob], outcomes: Sequence[Mapping[str, Any] | OracleError]
    ) -> None:
        """Successes in one transaction; each failure on its own (it may be retried)."""
        results = {
            job.id: outcome
            for job, outcome in zip(jobs, outcomes, strict=True)
            if not isinstance(outcome, OracleError)
        }
        with self.engine.begin() as conn:
            refused = complete_jobs(conn, worker_id=self.worker_id, results=results)
        for job_id in refused:
            logger.warning(
                "result refused: lease lost", extra={"job_id": job_id, "worker_id": self.worker_id}
            )
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, OracleError):
                self._fail(job, outcome)
            elif job.id not in refused:
                logger.info(
                    "job done",
                    extra={"job_id": job.id, "request_id": job.request_id, "kind": job.kind},
                )

    def _fail(self, job: ClaimedJob, error: OracleError) -> None:
        fields = {"job_id": job.id, "request_id": job.request_id, "worker_id": self.worker_id}
        # other errors are about the input (too long, invalid): retrying won't help
        delay = backoff_s(job.attempts) if isinstance(error, RetryLater) else None
        try:
            with self.engine.begin() as conn:
                status = fail_job(
                    conn,
                    job_id=job.id,
                    worker_id=self.worker_id,
                    error=str(error),
                    retry_after_s=delay,
                )
        except LeaseLost:
            logger.warning("failure not recorded: lease lost", extra=fields)
            return
        logger.warning("job failed", extra={**fields, "error": str(error), "status": status})


class _Heartbeat:
    """Extends the leases of the batch running now, from one long-lived side thread.

    One thread per worker rather than one per batch: for short jobs, starting a thread
    each batch costs more than the jobs themselves.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._job_ids: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    @contextmanager
    def covering(self, job_ids: list[int]) -> Iterator[None]:
        with self._lock:
            self._job_ids = job_ids
        try:
            yield
        finally:
            with self._lock:
                self._job_ids = []

    def _beat(self) -> None:
        interval = min(HEARTBEAT_S, self._worker.config.lease_s / 3)
        # a daemon thread, ending with the process: a batch still running after SIGTERM
        # keeps its leases until it is done
        while True:
            time.sleep(interval)
            with self._lock:
                job_ids = list(self._job_ids)
            with self._worker.engine.begin() as conn:  # the whole batch in one statement
                lost = heartbeat_jobs(
                    conn,
                    job_ids=job_ids,
                    worker_id=self._worker.worker_id,
                    lease_s=self._worker.config.lease_s,
                )
            for job_id in lost:
                logger.warning("lease lost while running", extra={"job_id": job_id})


def run_worker(config: WorkerConfig) -> None:
    """The body of ``oracle worker``: load, serve until SIGTERM/SIGINT, finish the batch, exit."""
    runner = make_runner(config)
    engine = make_engine(config.database_url, pool_size=2)
    worker = Worker(config, runner, engine)

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("stopping after the current batch", extra={"signal": signum})
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    waiter = NotificationWaiter(config.database_url, [JOBS_CHANNEL])
    try:
        worker.run(waiter.wait)
    finally:
        waiter.close()
        engine.dispose()
