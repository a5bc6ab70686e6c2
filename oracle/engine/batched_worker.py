"""An LLM worker that decodes many jobs together: continuous batching against the queue.

The loop, one decode step at a time:

1. **Claim** as many queued inference jobs as the model has free sequence slots, when
   there may be some: a wake-up arrived (``LISTEN``), the last claim filled every slot it
   asked for, or the poll interval passed. Claimed jobs join the batch at the next step;
   a job whose prompt cannot be served (too long, invalid) fails at once, never taking a
   slot, and a job already past its deadline is not started. A ``readback`` job in the
   claim (another node's answer read back through the model: ``AnswerReader``) runs
   there and then, on the CPU, while the batch waits: reads are few (only answers
   whose text differs from this node's) and bounded.
2. **Step**: one ``llama_decode`` for every sequence, one sampling round.
3. **Retire** the jobs that ended in that step at once: their results in one
   transaction, their slots free for the next claim. A job that reaches its deadline
   is cut there and fails (a late answer is no answer).

A side thread renews the worker's presence and the leases of the jobs in the batch;
a job whose lease was lost (taken back by the queue, or finished elsewhere) is dropped
from the batch at the next step, freeing its slot. SIGTERM stops the claiming; the
jobs in the batch are finished before the worker exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from oracle.domain.retry import backoff_s
from oracle.engine.batched import BatchedLlm, DecodeFailed, Finished, GenerationRequest
from oracle.engine.llm import Generation, InvalidGenerationRequest
from oracle.engine.models import lookup_llm
from oracle.engine.worker import (
    HEARTBEAT_S,
    LLM_KINDS,
    AnswerReader,
    RetryLater,
    WorkerConfig,
    make_worker_id,
    serve_until_signalled,
)
from oracle.errors import OracleError
from oracle.store.queue import (
    ClaimedJob,
    LeaseLost,
    claim_jobs,
    complete_jobs,
    fail_job,
    heartbeat_jobs,
)
from oracle.store.workers import announce_worker, retire_worker, worker_heartbeat

__all__ = ["BatchedWorker", "DeadlineReached", "run_batched_worker"]

logger = logging.getLogger(__name__)

_DATABASE_DOWN = (OperationalError, InterfaceError)
_LISTEN_EVERY_S = 0.005
"""While decoding, look for wake-ups at most this often: a look costs a fraction of a
millisecond, about what one decode step of one sequence takes on a GPU."""


class DeadlineReached(OracleError):
    """The job's deadline passed before its answer was complete."""


class BatchedWorker:
    """Claims inference jobs into a :class:`BatchedLlm` and records what it answers."""

    def __init__(self, config: WorkerConfig, llm: BatchedLlm, engine: Engine) -> None:
        self.config = config
        self.llm = llm
        self.engine = engine
        self.worker_id = make_worker_id(config.model)
        self.stopping = threading.Event()
        self._jobs: dict[int, ClaimedJob] = {}
        self._deadlines: dict[int, float] = {}
        self._claim_due = True
        self._last_claim = 0.0
        self._last_listen = 0.0
        self._steps = 0
        self._sequence_steps = 0
        """Decode steps so far, and the jobs in the batch summed over them."""
        self._joined: dict[int, tuple[int, int]] = {}
        """Each job's (steps, sequence steps) when it joined: what it shared the worker with."""
        self._beat = _LeaseKeeper(self)
        self._reader = AnswerReader(config.model, config.threads)

    def run(self, wait_for_work: Callable[[float], bool]) -> None:
        """Serve until ``stopping`` is set and the batch is empty."""
        self._announce()
        logger.info(
            "worker ready",
            extra={"worker_id": self.worker_id, "role": "llm", "slots": self.llm.slots},
        )
        self._beat.start()
        try:
            while not (self.stopping.is_set() and not self._jobs):
                if not self.run_once(wait_for_work) and not self.stopping.is_set():
                    wait_for_work(self.config.poll_interval_s)
                    self._claim_due = True  # woken, or the poll interval passed
        finally:
            self._beat.stop()
            self._retire_worker()
        logger.info("worker stopped", extra={"worker_id": self.worker_id})

    def run_once(self, wait_for_work: Callable[[float], bool]) -> bool:
        """Claim if due, then one decode step; False when there is nothing to decode."""
        self._drop_lost(self._beat.take_lost())
        if not self.stopping.is_set() and self.llm.free_slots:
            now = time.monotonic()
            if now - self._last_listen >= _LISTEN_EVERY_S:
                self._last_listen = now
                self._claim_due |= bool(wait_for_work(0))
            if now - self._last_claim > self.config.poll_interval_s:
                self._claim_due = True
            if self._claim_due:
                self._claim()
        if not self._jobs:
            return False
        self._steps += 1
        self._sequence_steps += len(self._jobs)
        finished = self._step()
        ended = {done.key for done in finished}
        finished += self._cut_at_deadlines(ended)
        if finished:
            self._record(finished)
        return True

    def _step(self) -> list[Finished]:
        try:
            return self.llm.step()
        except Exception as exc:  # a crash in the model must not kill the worker
            logger.exception("decode step crashed", extra={"worker_id": self.worker_id})
            error = RetryLater(f"{type(exc).__name__}: {exc}")
            keys = self.llm.active_keys()
            for key in keys:
                self.llm.cancel(key)
            return [Finished(key=key, outcome=error, elapsed_s=0.0) for key in keys]

    # --- claim ------------------------------------------------------------------------

    def _claim(self) -> None:
        wanted = self.llm.free_slots
        self._last_claim = time.monotonic()
        try:
            with self.engine.begin() as conn:
                jobs = claim_jobs(
                    conn,
                    worker_id=self.worker_id,
                    kinds=LLM_KINDS,
                    models=[self.config.model],
                    limit=wanted,
                    lease_s=self.config.lease_s,
                )
        except _DATABASE_DOWN as exc:
            logger.warning(
                "claim failed: database error",
                extra={"worker_id": self.worker_id, "error": str(exc)},
            )
            self._claim_due = False
            return
        # a full claim may have left more behind; a short one emptied the queue
        self._claim_due = len(jobs) == wanted
        refused: list[tuple[ClaimedJob, OracleError]] = []
        reads = [job for job in jobs if job.kind == "readback"]
        now = datetime.now(UTC)
        for job in jobs:
            error = None if job.kind == "readback" else self._admit(job, now)
            if error is not None:
                refused.append((job, error))
        for job, error in refused:
            self._fail(job, error)
        self._beat.track([*self._jobs.values(), *reads])
        if reads:
            self._read_back(reads)

    def _read_back(self, jobs: Sequence[ClaimedJob]) -> None:
        """Run claimed read-backs now, between two decode steps, and record them."""
        results: dict[int, Mapping[str, Any]] = {}
        for job in jobs:
            outcome = self._reader.read(job)
            if isinstance(outcome, OracleError):
                self._fail(job, outcome)
            else:
                results[job.id] = outcome
        self._beat.track(self._jobs.values())
        for job_id in self._complete(results):
            logger.warning(
                "result refused: lease lost", extra={"job_id": job_id, "worker_id": self.worker_id}
            )

    def _admit(self, job: ClaimedJob, now: datetime) -> OracleError | None:
        if job.deadline <= now:
            return DeadlineReached(f"job {job.id}, deadline {job.deadline.isoformat()}")
        try:
            self.llm.admit(_request_of(job))
        except OracleError as exc:
            return exc
        self._jobs[job.id] = job
        self._deadlines[job.id] = job.deadline.timestamp()
        self._joined[job.id] = (self._steps, self._sequence_steps)
        return None

    # --- retire -----------------------------------------------------------------------

    def _cut_at_deadlines(self, ended: set[int]) -> list[Finished]:
        """Drop the jobs whose deadline has passed (``ended``: those that just finished)."""
        now = time.time()
        late = [i for i, at in self._deadlines.items() if at <= now and i not in ended]
        cut = []
        for job_id in late:
            self.llm.cancel(job_id)
            error = DeadlineReached(f"job {job_id}: cut at its deadline")
            cut.append(Finished(key=job_id, outcome=error, elapsed_s=0.0))
        return cut

    def _record(self, finished: Sequence[Finished]) -> None:
        """Answers in one transaction, each failure on its own; the slots are free now."""
        results: dict[int, Mapping[str, Any]] = {}
        failures: list[tuple[ClaimedJob, OracleError]] = []
        for done in finished:
            job = self._jobs.pop(done.key)
            del self._deadlines[done.key]
            shared = self._shared_with(done.key)
            if isinstance(done.outcome, Generation):
                results[job.id] = _result(done.outcome, done.elapsed_s, shared)
            else:
                failures.append((job, done.outcome))
        self._beat.track(self._jobs.values())
        if self.llm.free_slots:
            self._claim_due = True
        refused = self._complete(results)
        for job_id in refused:
            logger.warning(
                "result refused: lease lost", extra={"job_id": job_id, "worker_id": self.worker_id}
            )
        for job, error in failures:
            self._fail(job, error)

    def _shared_with(self, job_id: int) -> float:
        """The jobs decoded together, on average over the steps of this one's life."""
        steps, sequence_steps = self._joined.pop(job_id, (self._steps, self._sequence_steps))
        if self._steps == steps:
            return 1.0
        return (self._sequence_steps - sequence_steps) / (self._steps - steps)

    def _complete(self, results: Mapping[int, Mapping[str, Any]]) -> list[int]:
        give_up = time.monotonic() + self.config.lease_s
        failures = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    return complete_jobs(conn, worker_id=self.worker_id, results=results)
            except _DATABASE_DOWN as exc:
                failures += 1
                fields = {"worker_id": self.worker_id, "failures": failures, "error": str(exc)}
                if time.monotonic() >= give_up:
                    logger.error("results not recorded: database unreachable", extra=fields)
                    return []
                logger.warning("record results: database error; trying again", extra=fields)
                time.sleep(min(backoff_s(failures), HEARTBEAT_S))

    def _fail(self, job: ClaimedJob, error: OracleError) -> None:
        fields = {"job_id": job.id, "request_id": job.request_id, "worker_id": self.worker_id}
        # a failed decode may pass; the rest is about the input or its time
        retry = isinstance(error, RetryLater | DecodeFailed)
        try:
            with self.engine.begin() as conn:
                status = fail_job(
                    conn,
                    job_id=job.id,
                    worker_id=self.worker_id,
                    error=str(error),
                    retry_after_s=backoff_s(job.attempts) if retry else None,
                )
        except LeaseLost:
            logger.warning("failure not recorded: lease lost", extra=fields)
            return
        except _DATABASE_DOWN as exc:
            logger.warning(
                "failure not recorded: database error", extra={**fields, "error": str(exc)}
            )
            return
        logger.warning("job failed", extra={**fields, "error": str(error), "status": status})

    def _drop_lost(self, lost: Sequence[int]) -> None:
        for job_id in lost:
            if job_id in self._jobs and self.llm.cancel(job_id):
                del self._jobs[job_id]
                del self._deadlines[job_id]
                self._joined.pop(job_id, None)
                self._claim_due = True
                logger.warning(
                    "lease lost: job dropped from the batch",
                    extra={"job_id": job_id, "worker_id": self.worker_id},
                )
        if lost:
            self._beat.track(self._jobs.values())

    # --- presence ---------------------------------------------------------------------

    def _announce(self) -> None:
        with self.engine.begin() as conn:
            announce_worker(
                conn,
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                role="llm",
                model=self.config.model,
                slots=self.llm.slots,
            )

    def _retire_worker(self) -> None:
        try:
            with self.engine.begin() as conn:
                retire_worker(conn, self.worker_id)
        except _DATABASE_DOWN as exc:  # the presence row goes stale on its own
            logger.warning(
                "retirement not recorded: database error",
                extra={"worker_id": self.worker_id, "error": str(exc)},
            )


class _LeaseKeeper:
    """A side thread that renews the worker's presence and its jobs' leases, and notes the
    jobs that are no longer the worker's."""

    def __init__(self, worker: BatchedWorker) -> None:
        self._worker = worker
        self._interval_s = min(HEARTBEAT_S, worker.config.lease_s / 3)
        self._job_ids: list[int] = []
        self._lost: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s * 2)

    def track(self, jobs: Sequence[ClaimedJob] | Any) -> None:
        ids = [job.id for job in jobs]
        with self._lock:
            self._job_ids = ids

    def take_lost(self) -> list[int]:
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    def beat(self) -> list[int]:
        """Presence and leases in one transaction; the jobs no longer this worker's."""
        worker = self._worker
        with self._lock:
            job_ids = list(self._job_ids)
        with worker.engine.begin() as conn:
            worker_heartbeat(conn, worker.worker_id)
            lost = heartbeat_jobs(
                conn, job_ids=job_ids, worker_id=worker.worker_id, lease_s=worker.config.lease_s
            )
        if lost:
            with self._lock:
                self._lost.extend(lost)
        return lost

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.beat()
            except Exception as exc:  # the thread must outlive any one beat
                logger.warning(
                    "heartbeat failed; trying again",
                    extra={
                        "worker_id": self._worker.worker_id,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )


def _request_of(job: ClaimedJob) -> GenerationRequest:
    payload = job.payload
    try:
        return GenerationRequest(
            key=job.id,
            prompt=str(payload["prompt"]),
            temperature_milli=int(payload["temperature_milli"]),
            max_tokens=int(payload["max_tokens"]),
            seed=int(payload["seed"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidGenerationRequest(
            field="payload", value=sorted(payload), allowed=f"an inference job's fields ({exc})"
        ) from exc


def _result(generation: Generation, elapsed_s: float, batch: float) -> dict[str, Any]:
    """The sequential runner's fields, and ``batch``: the jobs decoded together on average
    while this one ran, so that its ``elapsed_s / batch`` is its share of the worker's time
    (``oracle.store.queue_stats`` measures a worker's throughput by it)."""
    return {
        "batch": round(batch, 2),
        "text": generation.text,
        "completion_tokens": generation.completion_tokens,
        "prompt_tokens": generation.prompt_tokens,
        "finish_reason": generation.finish_reason,
        "seed": generation.seed,
        "model": generation.model,
        "elapsed_s": round(elapsed_s, 4),
    }


def load_batched_llm(config: WorkerConfig) -> BatchedLlm:
    """The model of ``config``, loaded with its LLM engine options."""
    options = config.llm
    return BatchedLlm(
        lookup_llm(config.model),
        parallel=options.parallel,
        threads=config.threads,
        gpu_layers=options.gpu_layers,
        kv_budget_mib=options.kv_budget_mib,
        slot_tokens=options.slot_tokens,
        contexts=options.resolved_contexts,
        device_top_k=options.device_top_k,
        kv_unified=options.kv_layout == "shared",
    )


def run_batched_worker(config: WorkerConfig) -> None:
    """The body of ``oracle worker --engine batched``: load, serve until SIGTERM/SIGINT,
    finish the jobs in the batch, exit."""
    llm = load_batched_llm(config)
    try:
        serve_until_signalled(
            config,
            lambda engine: BatchedWorker(config, llm, engine),
            pool_size=3,
            on_signal="stopping: no more claims; finishing the batch",
        )
    finally:
        llm.close()
