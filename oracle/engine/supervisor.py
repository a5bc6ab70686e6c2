"""Supervises worker processes: starts them, restarts the ones that die, scales, stops them.

Each worker is a separate process (``oracle worker``), so a model crash, a leak or a
SIGKILL takes down one worker, never the node; its leased jobs go back to the queue when
the lease runs out. A worker that exits unasked is restarted after a growing delay.

**Wedged workers.** A worker heartbeats its presence from a side thread all the time it
runs, and stops doing so only when it is stuck: its process frozen, or a batch running
past its jobs' deadlines (worker.py). The rule: a worker whose presence has been silent
for ``wedged_after_s`` (default :data:`WEDGED_AFTER_S`), while the database has been
answering the supervisor for at least ``settled_s`` (so that a database outage, which
silences every worker, is not taken for a wedge), is killed with SIGKILL (a process
stuck in C code may never run a SIGTERM handler) and restarted like a crashed one.

**GPUs.** Given the GPUs' memory, the supervisor places each worker that runs on a GPU
(an LLM worker with ``--gpu-layers``, an embedding worker on ``cuda``) on one of them by
its estimated need (:mod:`oracle.engine.gpus`): a fixed pool all at once, an autoscaled
one start by start (the planner picks the GPU). The worker starts with
``CUDA_VISIBLE_DEVICES`` set to that GPU alone.

**Secrets stay here.** Workers get the node's environment without its secrets (the key,
the keystore and its password, and anything named like a credential): they need only the
database URL, which they get as ``ORACLE_DATABASE_URL``.

Two ways to run: a fixed list of workers (``specs``), or autoscaling, where every tick
reads the demand from the queue, asks the planner (:mod:`oracle.engine.autoscale`) how
many workers of each model to run inside the budget, and applies its decisions: a start
spawns a worker, a stop sends SIGTERM (the worker finishes its batch, then exits). Each
decision is logged with its reason and counted in the supervisor's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from oracle.engine.autoscale import (
    AutoscaleSettings,
    Budget,
    Demand,
    ModelKey,
    ScaleDecision,
    ScaleHistory,
    WorkerView,
    plan,
    wanted_workers,
)
from oracle.engine.gpus import embedding_gpu_mib, llm_gpu_mib, place_all
from oracle.engine.llm_options import DEFAULT_LLM_ENGINE, LlmEngineOptions
from oracle.engine.worker import (
    LEASE_S,
    EmbeddingJobRunner,
    LlmJobRunner,
    Role,
    make_worker_id,
)
from oracle.errors import OracleError
from oracle.store import make_engine
from oracle.store.models import JobKind
from oracle.store.queue_stats import WorkerActivity, model_demand, worker_activity
from oracle.store.workers import (
    ALIVE_WITHIN_S,
    Presence,
    live_workers,
    presence,
    retire_workers,
)

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_AFTER_S = 60.0
"""A worker that has run this long without exiting starts its crash count afresh."""
WEDGED_AFTER_S = 2 * ALIVE_WITHIN_S
"""A worker whose presence has been silent this long is killed and restarted."""
DATABASE_SETTLED_S = 15.0
"""...provided the database has answered for this long: time for every healthy worker to
beat again after an outage (they retry at least every 5 s)."""
TICK_S = 2.0
"""How often the supervisor reads the database when it does not autoscale."""

WORKER_ENV_KEEP = frozenset({"ORACLE_DATA_DIR"})
"""The node's own variables a worker needs (the database URL is set separately)."""
_CREDENTIAL_WORDS = frozenset(
    {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "MNEMONIC", "CREDENTIALS", "KEYSTORE"}
)
_CREDENTIAL_PAIRS = ("PRIVATE_KEY", "API_KEY", "ACCESS_KEY", "SEED_PHRASE")

ROLE_KINDS: Mapping[Role, Sequence[JobKind]] = {
    "llm": LlmJobRunner.kinds,
    "embedding": EmbeddingJobRunner.kinds,
}

MEMORY_ESTIMATE_MIB: Mapping[str, float] = {
    "SmolLM2-135M-Instruct-Q4_1": 280.0,
    "gemma-3-270m-Q4_K_M": 460.0,
    "all-MiniLM-L6-v2": 560.0,
}
"""Resident memory of one worker, measured on a 2-core CPU machine and rounded up."""
_DecisionCounts = dict[tuple[str, str], int]

DEFAULT_MEMORY_MIB: Mapping[Role, float] = {"llm": 1024.0, "embedding": 768.0}
"""For models not measured above."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    role: Role
    model: str
    threads: int = 1
    device: str = "cpu"
    lease_s: float = LEASE_S
    llm: LlmEngineOptions = DEFAULT_LLM_ENGINE
    """An LLM worker's engine settings (ignored for embedding workers)."""
    embed_claim: int | None = None
    """An embedding worker's texts claimed at once (ignored for LLM workers); None: by
    device (worker.py)."""
    embed_batch: int | None = None
    """An embedding worker's texts a forward pass; None: the Embedder's."""
    embed_lanes: int | None = None
    """An embedding worker's claim-run-record loops; None: by device (worker.py)."""
    embed_process: bool | None = None
    """Whether an embedding worker runs its model in a process of its own; None: by
    device (worker.py)."""

    @property
    def key(self) -> ModelKey:
        return (self.role, self.model)

    @property
    def on_gpu(self) -> bool:
        """Whether the worker runs on a GPU: an LLM worker with layers there, an embedding
        worker on a device other than the CPU."""
        if self.role == "llm":
            return self.llm.gpu_layers != 0
        return self.device != "cpu"

    def gpu_mib(self) -> float:
        """The GPU memory one such worker holds, estimated (0 on the CPU)."""
        if not self.on_gpu:
            return 0.0
        if self.role == "embedding":
            return embedding_gpu_mib(self.model)
        return llm_gpu_mib(self.model, self.llm, _context_tokens(self.model))

    def command(self) -> list[str]:
        """The ``oracle worker`` command line (the database URL travels in the environment,
        where ``ps`` does not show its password)."""
        return [
            sys.executable,
            "-m",
            "oracle.cli",
            "worker",
            "--role",
            self.role,
            "--model",
            self.model,
            "--threads",
            str(self.threads),
            "--device",
            self.device,
            "--lease-s",
            str(self.lease_s),
            *(self.llm.cli_args() if self.role == "llm" else self._embedding_args()),
        ]

    def _embedding_args(self) -> list[str]:
        args = []
        if self.embed_claim is not None:
            args += ["--embed-claim", str(self.embed_claim)]
        if self.embed_batch is not None:
            args += ["--embed-batch", str(self.embed_batch)]
        if self.embed_lanes is not None:
            args += ["--embed-lanes", str(self.embed_lanes)]
        if self.embed_process is not None:
            args.append("--embed-process" if self.embed_process else "--no-embed-process")
        return args


@dataclass(frozen=True, slots=True, kw_only=True)
class Autoscaling:
    """How a supervisor scales: the workers it may run, its budget and its rules."""

    specs: Mapping[ModelKey, WorkerSpec]
    """How to start a worker of each model it may run."""
    budget: Budget
    settings: AutoscaleSettings
    interval_s: float = 2.0


def autoscaling_for(
    specs: Sequence[WorkerSpec],
    *,
    min_workers: Mapping[ModelKey, int],
    max_workers: int,
    max_memory_mib: float | None = None,
    max_threads: int | None = None,
    gpu_slots: int = 0,
    gpus: Mapping[int, float] | None = None,
    idle_unload_s: float = 300.0,
) -> Autoscaling:
    """Autoscaling over one spec per model, with the measured memory of known models.

    ``gpus``: memory for workers on each GPU (MiB by index), where the workers that run
    on a GPU are placed; without it, ``gpu_slots`` only counts them.
    """
    llm_threads = max((s.threads for s in specs if s.role == "llm"), default=1)
    on_gpu = [s for s in specs if s.on_gpu]
    budget = Budget(
        max_workers=max_workers,
        max_memory_mib=max_memory_mib,
        memory_mib={s.model: estimate_memory_mib(s.role, s.model) for s in specs},
        max_threads=max_threads,
        llm_threads=llm_threads,
        gpu_slots=gpu_slots if not gpus else max(gpu_slots, max_workers),
        gpu_need={s.model: 1 for s in on_gpu},
        gpus=dict(gpus or {}),
        gpu_memory_mib={s.model: s.gpu_mib() for s in on_gpu},
    )
    settings = AutoscaleSettings(
        min_workers={s.key: min_workers.get(s.key, 0) for s in specs},
        idle_unload_s=idle_unload_s,
    )
    return Autoscaling(specs={s.key: s for s in specs}, budget=budget, settings=settings)


def estimate_memory_mib(role: Role, model: str) -> float:
    return MEMORY_ESTIMATE_MIB.get(model, DEFAULT_MEMORY_MIB[role])


def _context_tokens(model: str) -> int:
    from oracle.engine.models import DEFAULT_CONTEXT_TOKENS, lookup_llm

    try:
        return lookup_llm(model).context_tokens
    except OracleError:  # an operator's model: the default context
        return DEFAULT_CONTEXT_TOKENS


def role_of(model: str) -> Role:
    """``embedding`` for a known embedding model, else ``llm``."""
    from oracle.engine.embedding_models import EMBEDDING_MODELS

    return "embedding" if model in EMBEDDING_MODELS else "llm"


@dataclass(slots=True)
class _Slot:
    key: str
    spec: WorkerSpec
    gpu: int | None = None
    """The GPU it runs on (``CUDA_VISIBLE_DEVICES``); None: as the node's environment says."""
    process: subprocess.Popen[bytes] | None = None
    crashes: int = 0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def worker_environment(parent: Mapping[str, str], database_url: str) -> dict[str, str]:
    """The environment a worker process starts with: the node's, less its secrets.

    Left out: every ``ORACLE_*`` variable but :data:`WORKER_ENV_KEEP` (the key, the
    keystore and its password, the RPC), and any variable named like a credential (a
    word such as PASSWORD, SECRET or TOKEN, or PRIVATE_KEY / API_KEY in its name). Kept:
    the rest (PATH, HOME, locale, thread counts, CUDA and libpq's ``PG*`` settings).
    """
    env = {name: value for name, value in parent.items() if not _is_secret(name)}
    env["ORACLE_DATABASE_URL"] = database_url
    return env


def _is_secret(name: str) -> bool:
    upper = name.upper()
    if upper.startswith("ORACLE_"):
        return upper not in WORKER_ENV_KEEP
    words = set(re.split(r"[^A-Z0-9]+", upper))
    return bool(words & _CREDENTIAL_WORDS) or any(pair in upper for pair in _CREDENTIAL_PAIRS)


class WorkerSupervisor:
    """Keeps worker processes running, scaled to demand when autoscaling, until stopped."""

    def __init__(
        self,
        database_url: str,
        specs: Sequence[WorkerSpec] = (),
        *,
        autoscaling: Autoscaling | None = None,
        gpus: Mapping[int, float] | None = None,
        wedged_after_s: float = WEDGED_AFTER_S,
        settled_s: float = DATABASE_SETTLED_S,
    ) -> None:
        """``specs``: a fixed pool; with ``gpus`` (memory for workers on each GPU), those
        of them that run on a GPU are placed there at once (GpuPlacementError when they do
        not fit). ``autoscaling`` places its own (its budget holds the GPUs)."""
        self._database_url = database_url
        self._autoscaling = autoscaling
        self._wedged_after_s = wedged_after_s
        self._settled_s = settled_s
        self._database_ok_since: float | None = None
        self._exited: list[str] = []
        """Worker ids of processes that died unasked, for their presence to be retired."""
        self._wedged_kills = 0
        self._serial = itertools.count(1)
        self._slots: dict[str, _Slot] = {}
        placed = _place(specs, gpus)
        for spec, gpu in zip(specs, placed, strict=True):
            self._add_slot(spec, gpu)
        self._hostname = socket.gethostname()
        self._history: dict[ModelKey, ScaleHistory] = {}
        self._held: dict[ModelKey, str] = {}
        self._wanted: dict[ModelKey, int] = {}
        self._decision_counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.RLock()
        self.metrics = SupervisorMetrics(self)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self._slots.values() if s.process and s.alive]

    def worker_ids(self) -> dict[str, str]:
        """``jobs.worker_id`` of each live worker, by slot key."""
        with self._lock:
            return {
                key: make_worker_id(s.spec.model, s.process.pid, self._hostname)
                for key, s in self._slots.items()
                if s.process is not None and s.alive
            }

    def counts(self) -> dict[ModelKey, int]:
        """Workers by (role, model), not counting those told to stop."""
        with self._lock:
            return dict(Counter(s.spec.key for s in self._slots.values() if not s.stopping))

    def start(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                if slot.process is None:
                    self._spawn(slot)

    def check(self) -> None:
        """Restart workers that exited unasked (with growing delays for ones that keep
        crashing); forget the ones that exited after being told to stop."""
        now = time.monotonic()
        with self._lock:
            for slot in list(self._slots.values()):
                if slot.stopping:
                    if not slot.alive:
                        self._forget(slot)
                elif slot.process is None:
                    if now >= slot.restart_at:
                        self._spawn(slot)
                elif slot.alive:
                    if now - slot.started_at > HEALTHY_AFTER_S:
                        slot.crashes = 0
                else:
                    self._schedule_restart(slot, now)

    def autoscale_tick(self, engine: Engine) -> list[ScaleDecision]:
        """Read the demand, plan, apply; the decisions taken (holds included)."""
        scaling = self._autoscaling
        if scaling is None:
            return []
        ids = self.worker_ids()
        with engine.connect() as conn:
            demands = _read_demand(conn, scaling, ids.values())
            activity = worker_activity(conn, list(ids.values()))
        with self._lock:
            now = time.monotonic()
            views = [self._view(slot, ids, activity, now) for slot in self._slots.values()]
            decisions = plan(
                demands=demands,
                workers=views,
                budget=scaling.budget,
                settings=scaling.settings,
                now=now,
                history=self._history,
            )
            for decision in decisions:
                self._apply(decision, now)
            self._note_holds(decisions)
            self._wanted = {d.key: wanted_workers(d, scaling.settings) for d in demands}
        return decisions

    def tend(self, engine: Engine) -> list[str]:
        """The database side of supervision: retire the presence of workers that died,
        then kill the wedged ones (see the module docstring); the slot keys killed."""
        now = time.monotonic()
        ids = self.worker_ids()
        with self._lock:
            exited, self._exited = self._exited, []
        try:
            with engine.begin() as conn:
                if exited:
                    retire_workers(conn, exited)
                seen = presence(conn, list(ids.values()))
        except DBAPIError:
            self._database_ok_since = None
            with self._lock:
                self._exited = exited + self._exited
            raise
        if self._database_ok_since is None:
            self._database_ok_since = now
        if now - self._database_ok_since < self._settled_s:
            return []
        return [
            key
            for key, worker_id in ids.items()
            if self._kill_if_wedged(key, seen.get(worker_id), now)
        ]

    async def run(
        self, stop: asyncio.Event, interval_s: float = 1.0, engine: Engine | None = None
    ) -> None:
        """Supervise until ``stop``: restart what exits, kill what is wedged, and with
        autoscaling, scale on every tick. Without an engine it makes its own.

        The workers are stopped when ``stop`` is set; should supervision itself fail, they
        keep running (and keep their slots) for the next ``run`` to take over.
        """
        own_engine = make_engine(self._database_url, pool_size=1) if engine is None else None
        db = engine or own_engine
        assert db is not None
        tick_s = self._autoscaling.interval_s if self._autoscaling else TICK_S
        self.start()
        next_tick = 0.0
        try:
            while not stop.is_set():
                self.check()
                if time.monotonic() >= next_tick:
                    await asyncio.to_thread(self._tick_logging_errors, db)
                    next_tick = time.monotonic() + tick_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
        finally:
            if stop.is_set():
                await asyncio.to_thread(self.stop)
            if own_engine is not None:
                own_engine.dispose()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every worker (they finish their batch), then SIGKILL what is left."""
        with self._lock:
            running = [s.process for s in self._slots.values() if s.process is not None]
            self._slots.clear()
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- inside -------------------------------------------------------------------------

    def _tick_logging_errors(self, engine: Engine) -> None:
        try:
            self.tend(engine)
            self.autoscale_tick(engine)
        except DBAPIError as exc:  # the database may come back; the workers keep running
            logger.warning("supervision tick skipped: database error", extra={"error": str(exc)})

    def _kill_if_wedged(self, key: str, seen: Presence | None, now: float) -> bool:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.process is None or not slot.alive or seen is None:
                return False
            # a row announced before this process started is an earlier process's (same pid)
            ours = seen.ready_for_s <= now - slot.started_at + 1.0
            if seen.stopped or not ours or seen.silent_for_s < self._wedged_after_s:
                return False
            slot.process.send_signal(signal.SIGKILL)
            self._wedged_kills += 1
        logger.error(
            "worker wedged: killed, to be restarted",
            extra={
                "worker": key,
                "model": slot.spec.model,
                "pid": slot.process.pid,
                "silent_for_s": round(seen.silent_for_s, 1),
            },
        )
        return True

    def _view(
        self,
        slot: _Slot,
        ids: Mapping[str, str],
        activity: Mapping[str, WorkerActivity],
        now: float,
    ) -> WorkerView:
        seen = activity.get(ids.get(slot.key, ""))
        idle_since = slot.started_at
        if seen is not None and seen.idle_for_s is not None:
            idle_since = max(idle_since, now - seen.idle_for_s)
        return WorkerView(
            key=slot.key,
            role=slot.spec.role,
            model=slot.spec.model,
            busy=seen is not None and seen.running_jobs > 0,
            idle_since=idle_since,
            started_at=slot.started_at,
            stopping=slot.stopping,
            gpu=slot.gpu,
        )

    def _apply(self, decision: ScaleDecision, now: float) -> None:
        scaling = self._autoscaling
        assert scaling is not None
        fields = {
            "role": decision.role,
            "model": decision.model,
            "cause": decision.cause,
            "reason": decision.reason,
        }
        if decision.action == "start":
            slot = self._add_slot(scaling.specs[decision.model_key], decision.gpu)
            self._spawn(slot)
            logger.info(
                "scaling: worker started", extra={**fields, "worker": slot.key, "gpu": slot.gpu}
            )
        elif decision.action == "stop" and decision.worker_key in self._slots:
            self._ask_to_stop(self._slots[decision.worker_key])
            logger.info("scaling: worker stopping", extra={**fields, "worker": decision.worker_key})
        if decision.action != "hold":
            self._decision_counts[(decision.action, decision.cause)] += 1
            last = self._history.get(decision.model_key, ScaleHistory())
            self._history[decision.model_key] = last.after(decision.action, now)

    def _note_holds(self, decisions: Sequence[ScaleDecision]) -> None:
        """Log a hold when it begins or its cause changes, not on every tick."""
        held = {d.model_key: d for d in decisions if d.action == "hold"}
        for key, decision in held.items():
            if self._held.get(key) != decision.cause:
                fields = {"role": key[0], "model": key[1], "cause": decision.cause}
                logger.info("scaling: held back", extra={**fields, "reason": decision.reason})
        self._held = {key: d.cause for key, d in held.items()}

    def _add_slot(self, spec: WorkerSpec, gpu: int | None = None) -> _Slot:
        slot = _Slot(key=f"{spec.role}:{spec.model}#{next(self._serial)}", spec=spec, gpu=gpu)
        self._slots[slot.key] = slot
        return slot

    def _ask_to_stop(self, slot: _Slot) -> None:
        slot.stopping = True
        if slot.process is not None and slot.alive:
            slot.process.terminate()  # SIGTERM: the worker finishes its batch first
        else:
            self._forget(slot)

    def _forget(self, slot: _Slot) -> None:
        self._slots.pop(slot.key, None)
        code = None if slot.process is None else slot.process.returncode
        logger.info(
            "worker stopped",
            extra={"worker": slot.key, "model": slot.spec.model, "exit_code": code},
        )

    def _schedule_restart(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        code = slot.process.returncode
        self._exited.append(make_worker_id(slot.spec.model, slot.process.pid, self._hostname))
        delay = RESTART_BACKOFF_S[min(slot.crashes, len(RESTART_BACKOFF_S) - 1)]
        slot.crashes += 1
        slot.process = None
        slot.restart_at = now + delay
        logger.error(
            "worker exited; restarting",
            extra={
                "worker": slot.key,
                "model": slot.spec.model,
                "role": slot.spec.role,
                "exit_code": code,
                "restart_in_s": delay,
            },
        )

    def _spawn(self, slot: _Slot) -> None:
        env = worker_environment(os.environ, self._database_url)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)  # the worker sees it as device 0
        # the worker stops once this process is gone (worker.watch_supervisor)
        command = [*slot.spec.command(), "--supervisor-pid", str(os.getpid())]
        slot.process = subprocess.Popen(command, env=env)
        slot.started_at = time.monotonic()
        logger.info(
            "worker started",
            extra={
                "worker": slot.key,
                "model": slot.spec.model,
                "role": slot.spec.role,
                "pid": slot.process.pid,
                "gpu": slot.gpu,
            },
        )

    def snapshot(self) -> tuple[dict[ModelKey, int], dict[ModelKey, int], _DecisionCounts, int]:
        """Workers by model, workers wanted by model, decisions by (action, cause), and
        wedged workers killed."""
        with self._lock:
            counts, wanted = self.counts(), dict(self._wanted)
            return counts, wanted, dict(self._decision_counts), self._wedged_kills


def _place(specs: Sequence[WorkerSpec], gpus: Mapping[int, float] | None) -> list[int | None]:
    """The GPU of each of a fixed pool's workers: those on a GPU placed by their need."""
    placed: list[int | None] = [None] * len(specs)
    if not gpus:
        return placed
    on_gpu = [i for i, spec in enumerate(specs) if spec.on_gpu]
    for i, gpu in zip(on_gpu, place_all([specs[i].gpu_mib() for i in on_gpu], gpus), strict=True):
        placed[i] = gpu
    return placed


def _read_demand(conn: Connection, scaling: Autoscaling, ours: Collection[str]) -> list[Demand]:
    """Demand for every role this supervisor runs; ``ours``: its own workers' ids (the
    live ones not among them run elsewhere)."""
    roles = {role for role, _model in scaling.specs}
    floor_s = scaling.settings.deadline_floor_s
    live = live_workers(conn)
    demands = []
    for role in sorted(roles):
        rows = model_demand(conn, kinds=ROLE_KINDS[role], deadline_floor_s=floor_s)
        for model, row in rows.items():
            demands.append(
                Demand(
                    role=role,
                    model=model,
                    queued_jobs=row.queued_jobs,
                    queued_work=row.queued_work,
                    earliest_deadline_s=row.earliest_deadline_s,
                    required_rate=row.required_rate,
                    running_jobs=row.running_jobs,
                    work_per_s=row.work_per_s,
                    other_workers=len(live.get((role, model), set()) - set(ours)),
                )
            )
    return demands


class SupervisorMetrics(Collector):
    """Workers by model, workers wanted by the demand, and scaling decisions taken."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts, wanted, decisions, wedged = self._supervisor.snapshot()
        workers = GaugeMetricFamily(
            "oracle_workers", "Worker processes by role and model", labels=["role", "model"]
        )
        for (role, model), count in sorted(counts.items()):
            workers.add_metric([role, model], float(count))
        yield workers
        want = GaugeMetricFamily(
            "oracle_workers_wanted",
            "Workers the queued demand needs by role and model (before minimum and budget)",
            labels=["role", "model"],
        )
        for (role, model), count in sorted(wanted.items()):
            want.add_metric([role, model], float(count))
        yield want
        taken = CounterMetricFamily(
            "oracle_autoscale_decisions",
            "Workers started and stopped by the autoscaler, by action and cause",
            labels=["action", "cause"],
        )
        for (action, cause), count in sorted(decisions.items()):
            taken.add_metric([action, cause], float(count))
        yield taken
        yield CounterMetricFamily(
            "oracle_workers_wedged_killed",
            "Workers killed and restarted because their heartbeat went silent",
            value=float(wedged),
        )
