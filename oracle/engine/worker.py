"""A worker process: one model loaded once, jobs claimed from Postgres until told to stop.

The node's engines start these as subprocesses (``oracle worker ...``); the same command
runs them on other machines, sharing only the database with the node.

What keeps a worker from hanging or poisoning its jobs:

- **Heartbeats that outlive database blips.** One side thread beats every few seconds:
  the worker's presence (``workers``) and the leases of the batch it runs (``jobs``), in
  one transaction. A database error is logged and the beat retried after a backoff; the
  thread never ends before the worker does.
- **A wall-clock limit per job: its deadline** (``jobs.deadline``, which the node derives
  from the request's commit or dispute deadline). A job claimed past it fails at once;
  generation stops at it (llm.py checks the clock on every token) and the job fails with
  the reason, never retried: its answer could no longer be used.
- **A worker stuck past a limit goes silent.** When a batch runs :data:`LIMIT_GRACE_LEASES`
  leases past one of its jobs' deadlines (stuck inside a C call that no clock check
  reaches), the heartbeat stops renewing the leases of the overdue jobs, so the queue's
  upkeep takes them back, and stops the presence heartbeat, which is how the supervisor
  tells a wedged worker from a busy one (supervisor.py kills and restarts it).
- **A bad item fails alone.** When a batch crashes, its jobs are run again one at a time:
  the one that crashes again fails with its reason (not retried), the others complete.

**Reading answers back** (``readback`` jobs, on LLM workers of the named model): another
node's revealed answer is read through the model with the request's prompt, temperature
and seed, and the result says how far the model's own logits lay from writing it
(:class:`AnswerReader`); the node disputes an answer that no way of writing it comes
within its margin of. The reader is a second copy of the model that keeps every
position's logits, loaded on the first such job.

**Lanes** (embedding workers on a GPU): a worker may run several claim-run-record loops
over its one model. Only one batch runs at a time, and waiting batches run in claim order
(a batch holding verification jobs before one of embeddings), but one lane's claim and
another's recording go on while the model runs: on a GPU, the queue's statements took
twice as long as encoding a claim, one after the other (README, GPU section). Each lane
holds at most one claim; the heartbeat renews every lane's jobs, waiting ones included.
On a GPU the model itself runs in a process of its own (``runner_process.py``), so that
the lanes' queue work and the encoder's host work do not share one interpreter.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from oracle.consensus.signal import SIGNALS, Centre, EmbeddingSignal, digest_bits, load_centre
from oracle.domain.retry import backoff_s
from oracle.engine.llm_options import DEFAULT_LLM_ENGINE, LlmEngineOptions
from oracle.engine.runner_process import RunnerProcess, RunnerProcessGone
from oracle.errors import OracleError, UnknownEmbeddingModel
from oracle.store import make_engine
from oracle.store.models import JobKind
from oracle.store.notify import NotificationWaiter
from oracle.store.queue import (
    JOBS_CHANNEL,
    ClaimedJob,
    LeaseLost,
    claim_jobs,
    complete_jobs,
    fail_job,
    heartbeat_jobs,
)
from oracle.store.workers import announce_worker, retire_worker, worker_heartbeat

logger = logging.getLogger(__name__)

Role = Literal["llm", "embedding"]
LEASE_S = 30.0
HEARTBEAT_S = 5.0
"""Presence and leases are renewed this often (or a third of the lease, if shorter)."""
LIMIT_GRACE_LEASES = 1.0
"""Leases a batch may run past a job's deadline (time to record the failure) before the
worker counts as stuck."""
EMBED_BATCH = 128
"""Texts an embedding worker claims at once: one encode call sorts them by length, so a
larger claim pads less (bench/embed.py: 128 gives about 1.3x the throughput of 32)."""
GPU_EMBED_LANES = 3
"""Lanes of an embedding worker on a GPU unless told otherwise: while one claim is
encoded, one lane records its results and another claims the next batch."""
GPU_EMBED_CLAIM = 2048
"""Texts an embedding worker on a GPU claims at once unless told otherwise (H200, three
lanes: 0.91 of one encode call over 16,384 texts with claims of 2,048, 0.81 with 1,024)."""
GPU_EMBED_BATCH = 256
"""Texts a forward pass of an embedding worker on a GPU unless told otherwise."""

DATABASE_DOWN = (OperationalError, InterfaceError)
"""What a lost or refused database connection raises: the work waits and tries again."""

_T = TypeVar("_T")

if TYPE_CHECKING:
    from oracle.engine.embedder import Embedder
    from oracle.engine.llm import LlmRunner
    from oracle.engine.token_count import ModelTokens


class RetryLater(OracleError):
    """The job failed for a reason that may pass; it goes back to the queue."""


class JobPastDeadline(OracleError):
    """The job's deadline passed before it could run; its answer could no longer be used."""


class JobCrashed(OracleError):
    """The job crashed its batch and crashed again on its own."""


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
    llm: LlmEngineOptions = DEFAULT_LLM_ENGINE
    """How an LLM worker runs its model (engine, GPU layers, sequences decoded together)."""
    embed_claim: int | None = None
    """Texts an embedding worker claims at once (one encode call); None: by device."""
    embed_batch: int | None = None
    """Texts an embedding worker encodes in one forward pass; None: by device (the
    Embedder's 32 on the CPU; on a GPU larger passes pay: README, GPU section)."""
    embed_lanes: int | None = None
    """Claim-run-record loops of an embedding worker (the module docstring); None: 1 on
    the CPU (its cores encode, there is nothing to overlap), :data:`GPU_EMBED_LANES` on a
    GPU."""
    embed_process: bool | None = None
    """Whether an embedding worker runs its model in a process of its own, its lanes'
    queue work in this one (``runner_process.py``); None: on a GPU only."""
    supervisor_pid: int | None = None
    """The process that started this worker (its parent): once it is gone, the worker
    stops as on SIGTERM (``watch_supervisor``). None: a worker of its own."""

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def claim(self) -> int:
        """Texts an embedding worker claims at once: as set, else by device."""
        if self.embed_claim is not None:
            return self.embed_claim
        return GPU_EMBED_CLAIM if self.on_gpu else EMBED_BATCH

    @property
    def forward_batch(self) -> int | None:
        """Texts an embedding worker encodes a forward pass: as set, else by device (None:
        the Embedder's)."""
        if self.embed_batch is not None:
            return self.embed_batch
        return GPU_EMBED_BATCH if self.on_gpu else None

    @property
    def runs_apart(self) -> bool:
        """Whether the model runs in a process of its own (embedding workers only)."""
        if self.role != "embedding":
            return False
        return self.on_gpu if self.embed_process is None else self.embed_process

    @property
    def lanes(self) -> int:
        """Claim-run-record loops this worker runs: more than one only for embeddings."""
        if self.role != "embedding":
            return 1
        if self.embed_lanes is not None:
            return max(1, self.embed_lanes)
        return GPU_EMBED_LANES if self.on_gpu else 1


LLM_KINDS: Sequence[JobKind] = ("inference", "readback")
"""The jobs an LLM worker claims, whichever engine it runs."""


class AnswerReader:
    """Runs ``readback`` jobs: reads a revealed answer back through the model, with the
    request's prompt, temperature and seed (``LlmRunner.choice_margins``).

    The result: ``max_margin``, in logits, of the way of writing the answer whose largest
    margin is smallest (None when none comes below the job's ``limit``: past it the
    search stops, so a hostile answer costs little), ``worst_token`` where it lies,
    ``tokens`` read and ``read_s``. Deliberately no ``elapsed_s``: the queue measures a
    model's speed from generations (``oracle.store.queue_stats``), and a read is not one.
    The model is loaded again, keeping every position's logits, on the first job (a
    worker that never reads pays nothing for it).
    """

    def __init__(self, model: str, threads: int) -> None:
        self.model = model
        self.threads = threads
        self._runner: LlmRunner | None = None

    def read(self, job: ClaimedJob) -> Mapping[str, Any] | OracleError:
        if job.deadline <= datetime.now(UTC):
            return JobPastDeadline(f"job {job.id}, deadline {job.deadline.isoformat()}")
        started = time.perf_counter()
        try:
            margins = self._loaded().choice_margins(
                prompt=str(job.payload["prompt"]),
                output=str(job.payload["text"]),
                temperature_milli=int(job.payload["temperature_milli"]),
                seed=int(job.payload["seed"]),
                max_tokens=int(job.payload["max_tokens"]),
                limit=float(job.payload["limit"]),
            )
        except OracleError as exc:
            return exc
        worst = int(margins.argmax()) if len(margins) else None
        largest = float(margins.max()) if len(margins) else 0.0
        return {
            "max_margin": largest if math.isfinite(largest) else None,
            "worst_token": worst,
            "tokens": len(margins),
            "read_s": round(time.perf_counter() - started, 4),
        }

    def _loaded(self) -> LlmRunner:
        if self._runner is None:
            from oracle.engine.llm import LlmRunner

            self._runner = LlmRunner.from_registry(
                self.model, n_threads=self.threads, reads_answers=True
            )
        return self._runner


class LlmJobRunner:
    kinds: Sequence[JobKind] = LLM_KINDS
    batch_size = 1

    def __init__(self, model: str, threads: int) -> None:
        from oracle.engine.llm import LlmRunner

        self._runner = LlmRunner.from_registry(model, n_threads=threads)
        self._reader = AnswerReader(model, threads)

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        return [
            self._reader.read(job) if job.kind == "readback" else self._run_one(job) for job in jobs
        ]

    def _run_one(self, job: ClaimedJob) -> Mapping[str, Any] | OracleError:
        started = time.perf_counter()
        try:
            generation = self._runner.generate(
                prompt=str(job.payload["prompt"]),
                temperature_milli=int(job.payload["temperature_milli"]),
                max_tokens=int(job.payload["max_tokens"]),
                seed=int(job.payload["seed"]),
                stop_at=job.deadline,
            )
        except OracleError as exc:
            return exc
        return {
            "text": answer_text(generation.text),
            "completion_tokens": generation.completion_tokens,
            "prompt_tokens": generation.prompt_tokens,
            "finish_reason": generation.finish_reason,
            "seed": generation.seed,
            "model": generation.model,
            "elapsed_s": round(time.perf_counter() - started, 4),
        }


def answer_text(generated: str) -> str:
    """The generated text as a node answers it: without NUL characters.

    A model may emit a NUL byte token (a prompt can ask for one); Postgres refuses NUL in
    text and JSON, and an answer the node cannot store it cannot commit. Every node drops
    them the same way, so honest answers still agree.
    """
    return generated.replace("\x00", "")


class EmbeddingJobRunner:
    """Embeds texts. A node's own answer (an ``embedding`` job whose payload asks to
    ``fit``) is cut first, so that every verifier can check all of it: to what the
    embedder reads and to maxTokens of the model that wrote it; the result carries the
    text embedded. A ``verification`` job also counts the revealed text's tokens: the
    embedder's, and those of the model it names when the payload asks (``count_model``)
    and the model is installed here."""

    kinds: Sequence[JobKind] = ("verification", "embedding")
    batch_size = EMBED_BATCH

    def __init__(
        self,
        model: str,
        device: str,
        threads: int,
        *,
        claim: int = EMBED_BATCH,
        forward_batch: int | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """``embedder``: one loaded already (``bench/embed.py`` times the queue around
        one whose bits are known); None loads ``model``."""
        from oracle.engine.embedder import DEFAULT_BATCH_SIZE, Embedder

        self.batch_size = claim
        self._embedder = embedder or Embedder(
            model, device=device, threads=threads, batch_size=forward_batch or DEFAULT_BATCH_SIZE
        )
        # torch initialises lazily: pay for it before announcing readiness, not on a deadline
        self._embedder.embed(["warm-up"])
        self._counters: dict[str, ModelTokens | None] = {}
        self._centres: dict[str, Centre | None] = {}

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        started = time.perf_counter()
        texts = [self._fitted(job) for job in jobs]
        bits: list[bytes | OracleError] = [b""] * len(texts)
        for name, indices in _by_signal(jobs).items():
            try:
                signal_, centre = self._signal(name)
            except OracleError as exc:  # not a signal of this model: those jobs fail alone
                for i in indices:
                    bits[i] = exc
                continue
            read = [
                texts[i] if signal_ is None else signal_.text(_prompt_of(jobs[i]), texts[i])
                for i in indices
            ]
            packed_bits = (
                [digest_bits(text, signal_.dimensions) for text in read]
                if signal_ is not None and signal_.exact
                else self._embedder.embed(read, centre)
            )
            for i, packed in zip(indices, packed_bits, strict=True):
                bits[i] = packed
        elapsed = round(time.perf_counter() - started, 4)
        results: list[Mapping[str, Any] | OracleError] = []
        for job, text, b in zip(jobs, texts, bits, strict=True):
            if isinstance(b, OracleError):
                results.append(b)
                continue
            result: dict[str, Any] = {
                "bits": b.hex(),
                "model": self._embedder.model,
                "elapsed_s": elapsed,
                "batch": len(jobs),
            }
            if "fit" in job.payload:
                result["text"] = text
            if job.kind == "verification":
                result.update(self._counts(job, text))
            results.append(result)
        return results

    def _signal(self, name: str | None) -> tuple[EmbeddingSignal | None, Centre | None]:
        """The registered signal a job asks for (None: this model's raw sign bits) and
        its centre, loaded once and checked against its registered sha256."""
        if name is None or name == self._embedder.model:
            return None, None
        signal_ = SIGNALS.get(name)
        if signal_ is None or signal_.model != self._embedder.model:
            raise UnknownEmbeddingModel(model=name, known=tuple(SIGNALS))
        if name not in self._centres:
            self._centres[name] = load_centre(signal_)
        return signal_, self._centres[name]

    def _fitted(self, job: ClaimedJob) -> str:
        text = _text_of(job)
        fit = job.payload.get("fit")
        if not isinstance(fit, Mapping):
            return text
        counter = self._counter(fit.get("model"))
        if counter is not None:
            text = counter.fit(text, int(fit["max_tokens"]))
        return self._embedder.fit(text)

    def _counts(self, job: ClaimedJob, text: str) -> dict[str, Any]:
        counter = self._counter(job.payload.get("count_model"))
        return {
            "embedder_tokens": self._embedder.token_count(text),
            "embedder_window": self._embedder.window,
            "model_tokens": None if counter is None else counter.count(text),
        }

    def _counter(self, model: object) -> ModelTokens | None:
        """The named model's token counter; None when none is named or it is not here."""
        if not isinstance(model, str) or not model:
            return None
        if model not in self._counters:
            from oracle.engine.token_count import ModelTokens

            try:
                self._counters[model] = ModelTokens(model)
            except (OracleError, ValueError) as exc:  # not here: other nodes count it
                logger.warning(
                    "cannot count tokens of this model here",
                    extra={"model": model, "error": str(exc)},
                )
                self._counters[model] = None
        return self._counters[model]


def _by_signal(jobs: Sequence[ClaimedJob]) -> dict[str | None, list[int]]:
    """The jobs' indices by the signal their payload names (None: the raw sign bits)."""
    groups: dict[str | None, list[int]] = {}
    for i, job in enumerate(jobs):
        name = job.payload.get("signal")
        groups.setdefault(name if isinstance(name, str) else None, []).append(i)
    return groups


def _prompt_of(job: ClaimedJob) -> str:
    prompt = job.payload.get("prompt", "")
    return prompt if isinstance(prompt, str) else ""


def _text_of(job: ClaimedJob) -> str:
    text = job.payload["text"]
    if not isinstance(text, str):
        raise TypeError(f"job {job.id}: payload text is a {type(text).__name__}, not a string")
    return text


def make_worker_id(model: str, pid: int | None = None, hostname: str | None = None) -> str:
    """The id a worker claims jobs under (``jobs.worker_id``): host, process and model."""
    host = socket.gethostname() if hostname is None else hostname
    return f"{host}:{os.getpid() if pid is None else pid}:{model}"


def make_runner(config: WorkerConfig) -> JobRunner:
    if config.role == "llm":
        return LlmJobRunner(config.model, config.threads)
    if config.runs_apart:
        return RunnerProcess(config)
    return EmbeddingJobRunner(
        config.model,
        config.device,
        config.threads,
        claim=config.claim,
        forward_batch=config.forward_batch,
    )


class Worker:
    """Claims, runs and completes jobs; a side thread heartbeats all the while."""

    def __init__(self, config: WorkerConfig, runner: JobRunner, engine: Engine) -> None:
        self.config = config
        self.runner = runner
        self.engine = engine
        self.worker_id = make_worker_id(config.model)
        self.stopping = threading.Event()
        self._heartbeat = _Heartbeat(self)
        self._turns = Turnstile()
        self._lane_failure: BaseException | None = None

    def run(self, wait_for_work: Callable[[float], object]) -> None:
        """Serve until ``stopping``: ``config.lanes`` loops, this thread one of them (the
        one that waits on ``wait_for_work``; the others wait for it)."""
        self._announce()
        lanes = self.config.lanes
        logger.info(
            "worker ready",
            extra={"worker_id": self.worker_id, "role": self.config.role, "lanes": lanes},
        )
        self._heartbeat.start()
        wakes = _Wakes(wait_for_work)
        others = [
            threading.Thread(target=self._follow, args=(wakes,), name=f"lane-{n}")
            for n in range(1, lanes)
        ]
        try:
            for thread in others:
                thread.start()
            self._lane(wakes.lead, wakes)
        finally:
            self.stopping.set()  # also when this lane failed: the others end too
            wakes.release()
            for thread in others:
                thread.join()
            self._heartbeat.stop()
            self._retire()
        logger.info("worker stopped", extra={"worker_id": self.worker_id})
        if self._lane_failure is not None:  # what stopped it, raised where this lane runs
            raise self._lane_failure

    def _follow(self, wakes: _Wakes) -> None:
        """A lane other than the first: what ends it in error stops the worker too."""
        try:
            self._lane(wakes.follow, wakes)
        except BaseException as exc:
            self._lane_failure = self._lane_failure or exc
            self.stopping.set()
            wakes.release()

    def _lane(self, wait: Callable[[float], object], wakes: _Wakes) -> None:
        while not self.stopping.is_set():
            claimed = self._claim_and_run()
            if claimed >= self.runner.batch_size:
                wakes.release()  # a full claim may have left more: idle lanes look too
            elif not claimed:
                wait(self.config.poll_interval_s)

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

    def _retire(self) -> None:
        try:
            with self.engine.begin() as conn:
                retire_worker(conn, self.worker_id)
        except DATABASE_DOWN as exc:  # the presence row goes stale on its own
            logger.warning(
                "retirement not recorded: database error",
                extra={"worker_id": self.worker_id, "error": str(exc)},
            )

    def run_once(self) -> bool:
        """Claim and run one batch; False when there was nothing to do (or no database)."""
        return self._claim_and_run() > 0

    def _claim_and_run(self) -> int:
        """Claim, run and record one batch; the jobs claimed (0: nothing to do)."""
        try:
            with self.engine.begin() as conn:
                jobs = claim_jobs(
                    conn,
                    worker_id=self.worker_id,
                    kinds=self.runner.kinds,
                    models=[self.config.model],
                    limit=self.runner.batch_size,
                    lease_s=self.config.lease_s,
                )
        except DATABASE_DOWN as exc:
            logger.warning(
                "claim failed: database error",
                extra={"worker_id": self.worker_id, "error": str(exc)},
            )
            return 0
        if not jobs:
            return 0
        gone: RunnerProcessGone | None = None
        with self._heartbeat.covering(jobs):
            try:
                outcomes = self._run_batch(jobs)
            except RunnerProcessGone as exc:  # the jobs go back to the queue; the worker stops
                gone = exc
                outcomes = [RetryLater(str(exc))] * len(jobs)
        self._database_retrying(lambda: self._finish_batch(jobs, outcomes), "record results")
        if gone is not None:
            raise gone
        return len(jobs)

    def _run_batch(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        """The runner's outcome for each job, in the batch's turn; jobs past their deadline
        when the turn comes are not run, and a batch that crashes runs again one job at a
        time."""
        with self._turns.turn(jobs[0].claim_order):
            now = datetime.now(UTC)
            outcomes: dict[int, Mapping[str, Any] | OracleError] = {
                job.id: JobPastDeadline(f"job {job.id}, deadline {job.deadline.isoformat()}")
                for job in jobs
                if job.deadline <= now
            }
            runnable = [job for job in jobs if job.id not in outcomes]
            collect = self._start(runnable)
        outcomes.update(zip((j.id for j in runnable), collect(), strict=True))
        return [outcomes[job.id] for job in jobs]

    def _start(
        self, jobs: Sequence[ClaimedJob]
    ) -> Callable[[], list[Mapping[str, Any] | OracleError]]:
        """Hand the batch to the runner, in its turn; the call returned gives each job's
        outcome. A runner in a process of its own runs batches in the order they reach it,
        so the turn passes on once the batch is there: the next lane's batch then waits in
        the pipe while this one runs, and the process goes from one to the next at once.
        A runner in this process runs the batch here, in the turn."""
        if not jobs:
            return list
        if isinstance(self.runner, RunnerProcess):
            outcomes_of = self.runner.submit(jobs)
            return lambda: self._run_guarded(jobs, outcomes_of)
        outcomes = self._run_guarded(jobs, lambda: self.runner.run(jobs))
        return lambda: outcomes

    def _run_guarded(
        self,
        jobs: Sequence[ClaimedJob],
        run: Callable[[], list[Mapping[str, Any] | OracleError]],
    ) -> list[Mapping[str, Any] | OracleError]:
        try:
            return run()
        except RunnerProcessGone:  # no job's fault, and no job can run here any more
            raise
        except Exception as exc:  # a crash in the model must not kill the worker
            fields = {"worker_id": self.worker_id, "batch": len(jobs), "error": _describe(exc)}
            if len(jobs) == 1:
                logger.exception("job batch crashed", extra=fields)
                return [RetryLater(_describe(exc))]
            logger.warning("job batch crashed; running its jobs one at a time", extra=fields)
            return [self._run_alone(job) for job in jobs]

    def _run_alone(self, job: ClaimedJob) -> Mapping[str, Any] | OracleError:
        try:
            (outcome,) = self.runner.run([job])
        except RunnerProcessGone:
            raise
        except Exception as exc:
            logger.exception(
                "job crashed on its own",
                extra={"job_id": job.id, "request_id": job.request_id, "worker_id": self.worker_id},
            )
            return JobCrashed(_describe(exc))
        return outcome

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
        done = [job for job in jobs if job.id in results and job.id not in refused]
        if len(done) == 1:
            (job,) = done
            logger.info(
                "job done", extra={"job_id": job.id, "request_id": job.request_id, "kind": job.kind}
            )
        elif done:  # one line a batch: a line a job cost a third of a GPU embedder's batch
            logger.info(
                "jobs done",
                extra={
                    "jobs": len(done),
                    "job_ids": [job.id for job in done],
                    "request_ids": sorted({j.request_id for j in done if j.request_id is not None}),
                    "kinds": sorted({job.kind for job in done}),
                },
            )

    def _fail(self, job: ClaimedJob, error: OracleError) -> None:
        fields = {"job_id": job.id, "request_id": job.request_id, "worker_id": self.worker_id}
        # other errors are about the input (too long, invalid) or its time: retrying won't help
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

    def _database_retrying(self, action: Callable[[], _T], what: str) -> _T | None:
        """``action()``, tried again after a backoff while the database is unreachable, for
        up to a lease (after that the jobs are no longer ours to record)."""
        give_up = time.monotonic() + self.config.lease_s
        failures = 0
        while True:
            try:
                return action()
            except DATABASE_DOWN as exc:
                failures += 1
                fields = {"worker_id": self.worker_id, "failures": failures, "error": str(exc)}
                if time.monotonic() >= give_up:
                    logger.error(f"{what}: database unreachable; given up", extra=fields)
                    return None
                logger.warning(f"{what}: database error; trying again", extra=fields)
                time.sleep(min(backoff_s(failures), self._heartbeat.interval_s))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BeatPlan:
    """What one heartbeat renews."""

    renew: list[int]
    """Jobs whose leases are extended."""
    overdue: list[int]
    """Jobs running past their deadline plus the grace: left for the queue to take back."""

    @property
    def stuck(self) -> bool:
        """The batch runs past a job's limit: the worker stops announcing that it is alive."""
        return bool(self.overdue)


def plan_beat(jobs: Sequence[ClaimedJob], *, now: datetime, grace: timedelta) -> BeatPlan:
    """Renew each running job's lease until ``grace`` after its deadline, no longer."""
    overdue = [job.id for job in jobs if now > job.deadline + grace]
    return BeatPlan(renew=[job.id for job in jobs if job.id not in overdue], overdue=overdue)


class _Heartbeat:
    """Renews the worker's presence and the leases of the batch running now, from one
    long-lived side thread (the module docstring says what it does when things go wrong).

    One thread per worker rather than one per batch: for short jobs, starting a thread
    each batch costs more than the jobs themselves.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.interval_s = min(HEARTBEAT_S, worker.config.lease_s / 3)
        self._grace = timedelta(seconds=worker.config.lease_s * LIMIT_GRACE_LEASES)
        self._batches: dict[int, list[ClaimedJob]] = {}
        """The batches of every lane, from their claim until their results are recorded."""
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stuck_logged = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s * 2)

    @contextmanager
    def covering(self, jobs: Sequence[ClaimedJob]) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._batches[token] = list(jobs)
        try:
            yield
        finally:
            with self._lock:
                del self._batches[token]

    def _run(self) -> None:
        # a daemon thread: a batch still running after SIGTERM keeps its leases until done
        failures = 0
        while not self._stop.wait(self._next_wait(failures)):
            try:
                self.beat()
            except Exception as exc:  # the thread must outlive any one beat
                failures += 1
                fields = {
                    "worker_id": self._worker.worker_id,
                    "failures": failures,
                    "error": _describe(exc),
                }
                if isinstance(exc, DATABASE_DOWN):
                    logger.warning("heartbeat failed: database error; trying again", extra=fields)
                else:
                    logger.exception("heartbeat failed; trying again", extra=fields)
                continue
            if failures:
                logger.info(
                    "heartbeat restored",
                    extra={"worker_id": self._worker.worker_id, "failures": failures},
                )
            failures = 0

    def _next_wait(self, failures: int) -> float:
        return min(backoff_s(failures), self.interval_s) if failures else self.interval_s

    def beat(self) -> BeatPlan:
        """One beat: presence (unless stuck) and leases, in one transaction."""
        with self._lock:
            jobs = [job for batch in self._batches.values() for job in batch]
        plan = plan_beat(jobs, now=datetime.now(UTC), grace=self._grace)
        self._note_stuck(plan)
        worker = self._worker
        with worker.engine.begin() as conn:
            if not plan.stuck:
                worker_heartbeat(conn, worker.worker_id)
            lost = heartbeat_jobs(
                conn, job_ids=plan.renew, worker_id=worker.worker_id, lease_s=worker.config.lease_s
            )
        for job_id in lost:
            logger.warning("lease lost while running", extra={"job_id": job_id})
        return plan

    def _note_stuck(self, plan: BeatPlan) -> None:
        if plan.stuck and not self._stuck_logged:
            logger.error(
                "batch stuck past its jobs' deadlines: leases and presence no longer renewed",
                extra={"worker_id": self._worker.worker_id, "overdue_jobs": plan.overdue},
            )
        self._stuck_logged = plan.stuck


class Turnstile:
    """One batch runs at a time; the waiting ones run in claim order (their first job's
    ``claim_order``, then arrival), so verification jobs claimed by any lane go first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[tuple[tuple[int, float, datetime, int], int]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Batches waiting for their turn."""
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def turn(self, order: tuple[int, float, datetime, int]) -> Iterator[None]:
        entry = (order, next(self._arrivals))
        with self._cond:
            heapq.heappush(self._waiting, entry)
            self._cond.wait_for(lambda: not self._busy and self._waiting[0] == entry)
            heapq.heappop(self._waiting)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class _Wakes:
    """Wake-ups shared by the lanes: the lead lane waits on the jobs channel, the others
    until the lead was woken (or their own poll interval passed)."""

    def __init__(self, wait_for_work: Callable[[float], object]) -> None:
        self._wait_for_work = wait_for_work
        self._cond = threading.Condition()
        self._wakes = 0

    def lead(self, timeout_s: float) -> None:
        woken = self._wait_for_work(timeout_s)
        if woken:
            self.release()

    def follow(self, timeout_s: float) -> None:
        with self._cond:
            seen = self._wakes
            self._cond.wait_for(lambda: self._wakes != seen, timeout_s)

    def release(self) -> None:
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()


def run_worker(config: WorkerConfig) -> None:
    """The body of ``oracle worker``: load, serve until SIGTERM/SIGINT, finish the batch, exit."""
    if config.role == "llm" and config.llm.engine == "batched":
        from oracle.engine.batched_worker import run_batched_worker

        run_batched_worker(config)
        return
    runner = make_runner(config)
    try:
        serve_until_signalled(
            config,
            lambda engine: Worker(config, runner, engine),
            pool_size=config.lanes + 1,
            on_signal="stopping after the current batch",
        )
    finally:
        if isinstance(runner, RunnerProcess):
            runner.close()


def settle_heap() -> int:
    """Collect what start-up left behind, then exempt every object still alive from
    later garbage collections (``gc.freeze``); the number of objects exempted.

    A loaded worker holds hundreds of thousands of objects that live as long as it does
    (the modules, the model's): 504,000 for an embedding worker with torch, 112,000 for
    an LLM worker. Python's full collections walk all of them, holding the GIL, every so
    often as a worker's jobs come and go: measured on the 2-core development machine,
    296 ms a full collection in the embedding worker (one of them in five claims of
    2,048 jobs) and 55 ms in the LLM worker, each a stall of every lane, decode and
    encode in the process. Exempted, a full collection walks only what came after
    (0.5 ms). Objects exempted are never freed by the collector: what start-up leaves
    in reference cycles is collected first.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("heap settled", extra={"objects_exempt_from_collection": frozen})
    return frozen


class Serving(Protocol):
    """A worker loop that ``serve_until_signalled`` runs and stops."""

    stopping: threading.Event

    def run(self, wait_for_work: Callable[[float], bool]) -> None: ...


def watch_supervisor(supervisor_pid: int, interval_s: float = 1.0) -> threading.Thread:
    """Stop this worker once the process that started it is gone: SIGTERM to itself, so
    the batch in hand finishes and its results are recorded.

    A node killed outright (SIGKILL, the kernel's OOM killer) runs no cleanup. Its workers
    would go on claiming, and the node, restarted, would start a second set beside them: on
    a GPU, the model's weights and KV cache held twice, and the new workers failing to load.
    A worker's parent is the supervisor until that dies; then it is someone else.
    """

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(interval_s)
        logger.warning(
            "the process that started this worker is gone; stopping",
            extra={"supervisor_pid": supervisor_pid},
        )
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


def serve_until_signalled(
    config: WorkerConfig,
    make_worker: Callable[[Engine], Serving],
    *,
    pool_size: int,
    on_signal: str,
) -> None:
    """Run a worker on its own engine until SIGTERM/SIGINT, waking on the jobs channel."""
    engine = make_engine(
        config.database_url,
        pool_size=pool_size,
        # pg_stat_activity names the worker behind each connection
        connect_args={"application_name": f"oracle worker {make_worker_id(config.model)}"[:63]},
    )
    worker = make_worker(engine)

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info(on_signal, extra={"signal": signum})
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if config.supervisor_pid is not None:
        watch_supervisor(config.supervisor_pid)
    waiter = NotificationWaiter(config.database_url, [JOBS_CHANNEL])
    settle_heap()
    try:
        worker.run(waiter.wait)
    finally:
        waiter.close()
        engine.dispose()
