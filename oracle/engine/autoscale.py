"""Autoscaling: how many workers of each model to run, decided from demand inside a budget.

Pure: no I/O. The supervisor gathers the demand (``oracle.store.queue_stats``) and the
state of its workers, calls :func:`plan` on every tick, and applies what comes back.

The rules, in the order a tick applies them:

1. **Unload idle workers.** A worker is stopped only when it is not busy, its model has
   no jobs queued or running, it has been idle for ``idle_unload_s``, its model keeps at
   least ``min_workers``, and no worker of that model was started or stopped within
   ``scale_down_cooldown_s`` (so workers leave one at a time).
2. **Keep the minimum.** Every served model gets ``min_workers`` workers.
3. **A first worker for waiting jobs.** A model with queued jobs and no worker (here or
   on another machine) gets one, most urgent model (earliest deadline) first. When the
   budget is full, idle workers of models without demand are stopped to make room (never
   a busy one, never below a minimum); the new worker starts once they have gone.
4. **Enough throughput for the deadlines.** A model whose waiting work needs more work
   per second than its workers give (measured per worker, a prior until measured; workers
   on other machines count) gets more workers, most urgent first, at most once per
   ``scale_up_cooldown_s``.

**GPUs.** With ``Budget.gpus`` (each GPU's memory for workers), a worker of a model
that runs on a GPU (``Budget.gpu_memory_mib``) starts only on a GPU with that much memory
left, counting every worker placed there, those still stopping included; the start says
which GPU (:func:`oracle.engine.gpus.pick_gpu`), and a worker that fits on none is held
with each GPU's free memory in the reason. Idle workers are stopped to make room for a
first worker on a GPU as they are for the other limits.

Hysteresis comes from the asymmetry: demand starts workers at once, but only a long idle
spell without demand stops them, so demand that comes and goes keeps its workers. Every
start respects every limit of the :class:`Budget`; what a limit or a cooldown holds back
is reported as a ``hold`` decision, with its reason, like the starts and stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, TypeAlias

from oracle.engine.gpus import describe_free, pick_gpu

if TYPE_CHECKING:
    from oracle.engine.worker import Role

ModelKey: TypeAlias = "tuple[Role, str]"
"""(role, model): the unit the planner counts workers by."""
Action = Literal["start", "stop", "hold"]
Cause = Literal["minimum", "waiting", "deadline", "idle", "preempt", "budget", "cooldown"]

WORK_UNIT: Mapping[str, str] = {"llm": "tokens", "embedding": "jobs"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    """What the queue asks of one model."""

    role: Role
    model: str
    queued_jobs: int = 0
    queued_work: float = 0.0
    """Work waiting: max_tokens for inference, one unit per embedding or verification job."""
    earliest_deadline_s: float | None = None
    """Seconds from now to the earliest deadline of a queued job (None: nothing queued)."""
    required_rate: float | None = None
    """Work per second that finishes every queued and running job by its deadline (the
    largest work due by a deadline over the seconds left until it); None: queued_work over
    the seconds to the earliest deadline."""
    running_jobs: int = 0
    work_per_s: float | None = None
    """Measured throughput of one worker; None until measured."""
    other_workers: int = 0
    """Live workers of this model that another process runs (``oracle worker`` elsewhere):
    they serve the demand too, but are not this supervisor's to stop."""

    @property
    def key(self) -> ModelKey:
        return (self.role, self.model)

    @property
    def in_demand(self) -> bool:
        return self.queued_jobs + self.running_jobs > 0

    def rate_needed(self, deadline_floor_s: float) -> float:
        if self.required_rate is not None:
            return self.required_rate
        if self.queued_jobs == 0:
            return 0.0
        horizon = max(self.earliest_deadline_s or 0.0, deadline_floor_s)
        return self.queued_work / horizon


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerView:
    """One worker as the supervisor sees it (times on the planner's clock, ``now``)."""

    key: str
    role: Role
    model: str
    busy: bool
    idle_since: float
    """When it last finished a job (or started, if it never did)."""
    started_at: float
    stopping: bool = False
    """Told to stop and not gone yet: it still uses its share of the budget."""
    gpu: int | None = None
    """The GPU it was started on (None: the CPU)."""

    @property
    def model_key(self) -> ModelKey:
        return (self.role, self.model)


@dataclass(frozen=True, slots=True)
class Usage:
    workers: int = 0
    memory_mib: float = 0.0
    threads: int = 0
    gpu_slots: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.workers + other.workers,
            self.memory_mib + other.memory_mib,
            self.threads + other.threads,
            self.gpu_slots + other.gpu_slots,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.workers - other.workers,
            self.memory_mib - other.memory_mib,
            self.threads - other.threads,
            self.gpu_slots - other.gpu_slots,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """The operator's limits over all the workers one supervisor runs."""

    max_workers: int
    max_memory_mib: float | None = None
    """None: memory is not limited."""
    memory_mib: Mapping[str, float] = field(default_factory=dict)
    """Estimated resident memory of one worker, by model."""
    default_memory_mib: float = 512.0
    max_threads: int | None = None
    """None: threads are not limited."""
    llm_threads: int = 1
    """Threads of one LLM worker."""
    embedding_threads: int = 1
    gpu_slots: int = 0
    gpu_need: Mapping[str, int] = field(default_factory=dict)
    """GPU slots one worker of the model takes (0 when absent: it runs on the CPU)."""
    gpus: Mapping[int, float] = field(default_factory=dict)
    """Memory for workers on each GPU, in MiB, by GPU index; empty: GPUs are counted in
    ``gpu_slots`` alone, not placed."""
    gpu_memory_mib: Mapping[str, float] = field(default_factory=dict)
    """GPU memory one worker of the model holds (absent: it runs on the CPU)."""

    def gpu_mib(self, model: str) -> float | None:
        """What a worker of ``model`` needs of one GPU; None when it is not placed on one."""
        if not self.gpus:
            return None
        return self.gpu_memory_mib.get(model)

    def cost(self, role: Role, model: str) -> Usage:
        return Usage(
            workers=1,
            memory_mib=self.memory_mib.get(model, self.default_memory_mib),
            threads=self.llm_threads if role == "llm" else self.embedding_threads,
            gpu_slots=self.gpu_need.get(model, 0),
        )

    def exceeded(self, usage: Usage) -> str | None:
        """Which limit ``usage`` breaks, in words; None when it fits."""
        if usage.workers > self.max_workers:
            return f"workers {usage.workers} > {self.max_workers}"
        if self.max_memory_mib is not None and usage.memory_mib > self.max_memory_mib:
            return f"memory {usage.memory_mib:.0f} MiB > {self.max_memory_mib:.0f} MiB"
        if self.max_threads is not None and usage.threads > self.max_threads:
            return f"threads {usage.threads} > {self.max_threads}"
        if usage.gpu_slots > self.gpu_slots:
            return f"GPU slots {usage.gpu_slots} > {self.gpu_slots}"
        return None


def _default_prior() -> dict[str, float]:
    return {"llm": 30.0, "embedding": 20.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscaleSettings:
    min_workers: Mapping[ModelKey, int]
    """Every model this supervisor may run, with the workers it keeps even when idle."""
    idle_unload_s: float = 300.0
    scale_up_cooldown_s: float = 10.0
    """Least time between two starts of workers of one model (a first worker never waits)."""
    scale_down_cooldown_s: float = 60.0
    """Least time between a start or stop of a model's workers and the next idle stop."""
    prior_work_per_s: Mapping[str, float] = field(default_factory=_default_prior)
    """Throughput of one worker by role, until measured."""
    deadline_floor_s: float = 1.0
    """Deadlines nearer than this count as this far (keeps the rate finite)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleHistory:
    """When the supervisor last started and stopped a worker of one model."""

    last_start_at: float | None = None
    last_stop_at: float | None = None

    def after(self, action: Literal["start", "stop"], now: float) -> ScaleHistory:
        """The history once a worker was started or stopped at ``now``."""
        if action == "start":
            return replace(self, last_start_at=now)
        return replace(self, last_stop_at=now)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleDecision:
    action: Action
    role: Role
    model: str
    worker_key: str | None
    """The worker to stop; None for start and hold."""
    cause: Cause
    reason: str
    gpu: int | None = None
    """For a start: the GPU the worker goes on (None: the CPU)."""

    @property
    def model_key(self) -> ModelKey:
        return (self.role, self.model)


def wanted_workers(demand: Demand, settings: AutoscaleSettings) -> int:
    """Workers that meet the deadlines of ``demand`` (not counting the minimum)."""
    if demand.queued_jobs == 0:
        return 0
    speed = _speed(demand, settings)
    needed = math.ceil(demand.rate_needed(settings.deadline_floor_s) / speed - 1e-9)
    return min(max(1, needed), demand.queued_jobs + demand.running_jobs)


def plan(
    *,
    demands: Sequence[Demand],
    workers: Sequence[WorkerView],
    budget: Budget,
    settings: AutoscaleSettings,
    now: float,
    history: Mapping[ModelKey, ScaleHistory] | None = None,
) -> list[ScaleDecision]:
    """This tick's decisions, in the order to apply them."""
    tick = _Tick(demands, workers, budget, settings, now, dict(history or {}))
    _unload_idle(tick)
    _keep_minimum(tick)
    _first_workers(tick)
    _meet_deadlines(tick)
    return tick.decisions


# --- the working state of one tick ------------------------------------------------------


class _Tick:
    def __init__(
        self,
        demands: Sequence[Demand],
        workers: Sequence[WorkerView],
        budget: Budget,
        settings: AutoscaleSettings,
        now: float,
        history: dict[ModelKey, ScaleHistory],
    ) -> None:
        self.budget = budget
        self.settings = settings
        self.now = now
        self.prior = dict(history)
        self.history = history
        self.demand = {d.key: d for d in demands}
        self.workers = list(workers)
        self.count: dict[ModelKey, int] = {key: 0 for key in settings.min_workers}
        self.used = Usage()
        self.leaving = Usage()
        self.gpu_free: dict[int, float] = dict(budget.gpus)
        """Memory left on each GPU once every worker placed there is counted."""
        self.gpu_leaving: dict[int, float] = dict.fromkeys(budget.gpus, 0.0)
        """Memory on each GPU held by workers told to stop."""
        for view in workers:
            cost = budget.cost(view.role, view.model)
            self.used += cost
            self._hold_gpu(view, 1.0)
            if view.stopping:
                self.leaving += cost
                self._free_gpu(view)
            else:
                self.count[view.model_key] = self.count.get(view.model_key, 0) + 1
        self.stopped: set[str] = set()
        self.decisions: list[ScaleDecision] = []

    def demand_of(self, key: ModelKey) -> Demand:
        return self.demand.get(key) or Demand(role=key[0], model=key[1])

    def served(self, key: ModelKey) -> bool:
        return key in self.settings.min_workers

    def floor(self, key: ModelKey) -> int:
        return self.settings.min_workers.get(key, 0)

    def urgent_first(self) -> list[Demand]:
        """Served models with queued jobs, the earliest deadline first."""
        waiting = [d for d in self.demand.values() if d.queued_jobs > 0 and self.served(d.key)]
        return sorted(waiting, key=_urgency)

    def start(self, key: ModelKey, cause: Cause, reason: str, gpu: int | None = None) -> None:
        self.used += self.budget.cost(*key)
        self.count[key] = self.count.get(key, 0) + 1
        self.history[key] = self.history.get(key, ScaleHistory()).after("start", self.now)
        need = self.budget.gpu_mib(key[1])
        if gpu is not None and need is not None:
            self.gpu_free[gpu] -= need
        self._decide("start", key, None, cause, reason, gpu)

    def stop(self, view: WorkerView, cause: Cause, reason: str) -> None:
        key = view.model_key
        self.leaving += self.budget.cost(*key)
        self._free_gpu(view)
        self.count[key] -= 1
        self.stopped.add(view.key)
        self.history[key] = self.history.get(key, ScaleHistory()).after("stop", self.now)
        self._decide("stop", key, view.key, cause, reason)

    def hold(self, key: ModelKey, cause: Cause, reason: str) -> None:
        self._decide("hold", key, None, cause, reason)

    def _decide(
        self,
        action: Action,
        key: ModelKey,
        worker_key: str | None,
        cause: Cause,
        reason: str,
        gpu: int | None = None,
    ) -> None:
        self.decisions.append(
            ScaleDecision(
                action=action,
                role=key[0],
                model=key[1],
                worker_key=worker_key,
                cause=cause,
                reason=reason,
                gpu=gpu,
            )
        )

    def _hold_gpu(self, view: WorkerView, sign: float) -> None:
        need = self.budget.gpu_mib(view.model)
        if view.gpu is not None and need is not None and view.gpu in self.gpu_free:
            self.gpu_free[view.gpu] -= sign * need

    def _free_gpu(self, view: WorkerView) -> None:
        """Count ``view``'s GPU memory as leaving (it is held until the worker exits)."""
        need = self.budget.gpu_mib(view.model)
        if view.gpu is not None and need is not None and view.gpu in self.gpu_leaving:
            self.gpu_leaving[view.gpu] += need

    def fits(
        self,
        key: ModelKey,
        *,
        freed: Usage | None = None,
        freed_gpu: Mapping[int, float] | None = None,
    ) -> tuple[str | None, int | None]:
        """Whether one more worker of ``key`` fits, once ``freed`` (and ``freed_gpu`` on each
        GPU) is given back: the limit it breaks, in words (None: it fits), and its GPU."""
        limit = self.budget.exceeded(self.used - (freed or Usage()) + self.budget.cost(*key))
        if limit is not None:
            return limit, None
        need = self.budget.gpu_mib(key[1])
        if need is None:
            return None, None
        free = {i: left + (freed_gpu or {}).get(i, 0.0) for i, left in self.gpu_free.items()}
        gpu = pick_gpu(free, need)
        if gpu is None:
            return f"no GPU has {need:.0f} MiB free ({describe_free(free)})", None
        return None, gpu

    def try_start(self, key: ModelKey, cause: Cause, reason: str) -> bool:
        """Start a worker if the budget allows it, else hold and say which limit stops it."""
        limit, gpu = self.fits(key)
        if limit is not None:
            self.hold(key, "budget", f"wanted ({reason}), but the budget is full: {limit}")
            return False
        self.start(key, cause, reason, gpu)
        return True

    def idle_for(self, view: WorkerView) -> float:
        return self.now - view.idle_since

    def candidates(self) -> list[WorkerView]:
        """Workers that may be stopped: idle, not already leaving; longest idle first."""
        free = [w for w in self.workers if not (w.busy or w.stopping or w.key in self.stopped)]
        return sorted(free, key=lambda w: (w.idle_since, w.key))

    def down_cooling(self, key: ModelKey) -> bool:
        last = self.history.get(key, ScaleHistory())
        changes = [t for t in (last.last_start_at, last.last_stop_at) if t is not None]
        return any(self.now - t < self.settings.scale_down_cooldown_s for t in changes)

    def up_cooling(self, key: ModelKey) -> bool:
        last = self.prior.get(key, ScaleHistory()).last_start_at
        return last is not None and self.now - last < self.settings.scale_up_cooldown_s


def _urgency(demand: Demand) -> tuple[float, float, str]:
    deadline = demand.earliest_deadline_s
    return (math.inf if deadline is None else deadline, -demand.queued_work, demand.model)


def _speed(demand: Demand, settings: AutoscaleSettings) -> float:
    prior = settings.prior_work_per_s.get(demand.role, 1.0)
    return demand.work_per_s if demand.work_per_s and demand.work_per_s > 0 else prior


def _describe(demand: Demand) -> str:
    unit = WORK_UNIT.get(demand.role, "units")
    text = f"{demand.queued_jobs} job(s), {demand.queued_work:.0f} {unit} waiting"
    if demand.earliest_deadline_s is not None:
        text += f", earliest deadline in {demand.earliest_deadline_s:.1f} s"
    return text


# --- the rules ----------------------------------------------------------------------------


def _unload_idle(tick: _Tick) -> None:
    idle_unload_s = tick.settings.idle_unload_s
    for view in tick.candidates():
        key = view.model_key
        if tick.demand_of(key).in_demand or tick.count.get(key, 0) <= tick.floor(key):
            continue
        if tick.idle_for(view) < idle_unload_s or tick.down_cooling(key):
            continue
        tick.stop(
            view,
            "idle",
            f"idle for {tick.idle_for(view):.0f} s (unloads after {idle_unload_s:.0f} s) "
            "and no job of its model is queued or running",
        )


def _keep_minimum(tick: _Tick) -> None:
    for key, floor in tick.settings.min_workers.items():
        while tick.count.get(key, 0) < floor:
            reason = f"keeps at least {floor} worker(s) of this model"
            if not tick.try_start(key, "minimum", reason):
                break


def _first_workers(tick: _Tick) -> None:
    for demand in tick.urgent_first():
        if tick.count.get(demand.key, 0) + demand.other_workers > 0:
            continue
        reason = f"{_describe(demand)} and no worker of this model"
        limit, gpu = tick.fits(demand.key)
        if limit is None:
            tick.start(demand.key, "waiting", reason, gpu)
        elif tick.fits(demand.key, freed=tick.leaving, freed_gpu=tick.gpu_leaving)[0] is None:
            tick.hold(demand.key, "budget", f"{reason}: waiting for stopping workers to exit")
        else:
            _make_room(tick, demand)


def _make_room(tick: _Tick, demand: Demand) -> None:
    """Stop idle workers of models without demand until ``demand`` fits, or stop none.

    One worker whose going makes room is enough (on GPUs, the one on the right GPU);
    else the longest idle go, one after another, until there is room.
    """
    victims: list[WorkerView] = []
    counts = dict(tick.count)
    freed = tick.leaving
    freed_gpu = dict(tick.gpu_leaving)
    eligible = [
        view
        for view in tick.candidates()
        if not tick.demand_of(view.model_key).in_demand
        and counts.get(view.model_key, 0) > tick.floor(view.model_key)
    ]
    for view in eligible:
        alone_gpu = _freeing(tick, view, freed_gpu)
        if (
            tick.fits(
                demand.key, freed=freed + tick.budget.cost(*view.model_key), freed_gpu=alone_gpu
            )[0]
            is None
        ):
            eligible = [view]
            break
    for view in eligible:
        key = view.model_key
        if counts.get(key, 0) <= tick.floor(key):
            continue
        victims.append(view)
        counts[key] -= 1
        freed += tick.budget.cost(*key)
        freed_gpu = _freeing(tick, view, freed_gpu)
        if tick.fits(demand.key, freed=freed, freed_gpu=freed_gpu)[0] is None:
            break
    limit = tick.fits(demand.key, freed=freed, freed_gpu=freed_gpu)[0]
    if limit is not None:
        tick.hold(
            demand.key,
            "budget",
            f"{_describe(demand)} and no worker of this model, but the budget is full ({limit}) "
            "and no idle worker of a model without demand can make room",
        )
        return
    for view in victims:
        tick.stop(
            view,
            "preempt",
            f"idle for {tick.idle_for(view):.0f} s with no demand for its model; makes room "
            f"for {demand.model} ({_describe(demand)})",
        )


def _freeing(tick: _Tick, view: WorkerView, freed_gpu: Mapping[int, float]) -> dict[int, float]:
    """``freed_gpu`` plus the GPU memory ``view`` holds."""
    freed = dict(freed_gpu)
    need = tick.budget.gpu_mib(view.model)
    if view.gpu is not None and need is not None:
        freed[view.gpu] = freed.get(view.gpu, 0.0) + need
    return freed


def _meet_deadlines(tick: _Tick) -> None:
    for demand in tick.urgent_first():
        have = tick.count.get(demand.key, 0) + demand.other_workers
        want = wanted_workers(demand, tick.settings)
        if want <= have or have == 0:
            continue  # a model without workers was handled by _first_workers
        rate = demand.rate_needed(tick.settings.deadline_floor_s)
        unit = WORK_UNIT.get(demand.role, "units")
        reason = (
            f"{_describe(demand)}: needs {rate:.1f} {unit}/s, one worker does "
            f"{_speed(demand, tick.settings):.1f}; {want} worker(s) wanted, {have} running"
        )
        if tick.up_cooling(demand.key):
            cooldown = tick.settings.scale_up_cooldown_s
            tick.hold(
                demand.key, "cooldown", f"{reason}; last start less than {cooldown:.0f} s ago"
            )
            continue
        for _ in range(want - have):
            if not tick.try_start(demand.key, "deadline", reason):
                break
