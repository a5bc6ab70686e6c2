"""The autoscaling planner: pure decisions over demand, workers, budget and history."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

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

SMOL: ModelKey = ("llm", "smol")
GEMMA: ModelKey = ("llm", "gemma")
MINILM: ModelKey = ("embedding", "minilm")
NOW = 1_000.0


def settings(**changes: Any) -> AutoscaleSettings:
    base = AutoscaleSettings(
        min_workers={SMOL: 0, GEMMA: 0, MINILM: 0},
        idle_unload_s=60.0,
        scale_up_cooldown_s=10.0,
        scale_down_cooldown_s=30.0,
        prior_work_per_s={"llm": 10.0, "embedding": 10.0},
    )
    return replace(base, **changes)


def budget(**changes: Any) -> Budget:
    return replace(Budget(max_workers=8), **changes)


def worker(
    key: str,
    model: ModelKey = SMOL,
    *,
    busy: bool = False,
    idle_s: float = 0.0,
    stopping: bool = False,
) -> WorkerView:
    return WorkerView(
        key=key,
        role=model[0],
        model=model[1],
        busy=busy,
        idle_since=NOW - idle_s,
        started_at=NOW - max(idle_s, 1.0),
        stopping=stopping,
    )


def demand(
    model: ModelKey = SMOL,
    *,
    jobs: int = 1,
    work: float = 10.0,
    deadline_s: float | None = 60.0,
    running: int = 0,
    speed: float | None = None,
    rate: float | None = None,
) -> Demand:
    return Demand(
        role=model[0],
        model=model[1],
        queued_jobs=jobs,
        queued_work=work if jobs else 0.0,
        earliest_deadline_s=deadline_s if jobs else None,
        required_rate=rate,
        running_jobs=running,
        work_per_s=speed,
    )


def decide(
    demands: Sequence[Demand] = (),
    workers: Sequence[WorkerView] = (),
    *,
    the_budget: Budget | None = None,
    the_settings: AutoscaleSettings | None = None,
    history: dict[ModelKey, ScaleHistory] | None = None,
    now: float = NOW,
) -> list[ScaleDecision]:
    decisions = plan(
        demands=demands,
        workers=workers,
        budget=the_budget or budget(),
        settings=the_settings or settings(),
        now=now,
        history=history,
    )
    assert all(d.reason for d in decisions), "every decision says why"
    return decisions


def taken(decisions: Sequence[ScaleDecision]) -> list[tuple[str, str, str | None, str]]:
    return [(d.action, d.model, d.worker_key, d.cause) for d in decisions if d.action != "hold"]


def holds(decisions: Sequence[ScaleDecision]) -> list[ScaleDecision]:
    return [d for d in decisions if d.action == "hold"]


# --- starting ---------------------------------------------------------------------------


def test_nothing_to_do_without_demand_or_minimum() -> None:
    assert decide() == []
    assert decide([demand(jobs=0)], [worker("w1", idle_s=5)]) == []


def test_keeps_the_minimum_of_every_served_model() -> None:
    decisions = decide(the_settings=settings(min_workers={SMOL: 2, MINILM: 1}))
    assert taken(decisions) == [
        ("start", "smol", None, "minimum"),
        ("start", "smol", None, "minimum"),
        ("start", "minilm", None, "minimum"),
    ]


def test_waiting_jobs_and_no_worker_start_one() -> None:
    decisions = decide([demand(jobs=1, work=5, deadline_s=600)])
    assert taken(decisions) == [("start", "smol", None, "waiting")]
    assert "1 job(s), 5 tokens waiting" in decisions[0].reason
    assert "no worker of this model" in decisions[0].reason


def test_demand_for_a_model_not_served_here_is_ignored() -> None:
    assert decide([demand(("llm", "elsewhere"), jobs=5)]) == []


def test_more_workers_when_the_deadlines_need_more_throughput() -> None:
    # 1000 tokens due in 20 s at 10 tokens/s per worker: 5 workers
    urgent = demand(jobs=10, work=1000, deadline_s=20)
    assert wanted_workers(urgent, settings()) == 5
    decisions = decide([urgent], [worker("w1", busy=True)])
    assert taken(decisions) == [("start", "smol", None, "deadline")] * 4
    assert "5 worker(s) wanted, 1 running" in decisions[0].reason


def test_measured_speed_replaces_the_prior() -> None:
    fast = demand(jobs=10, work=1000, deadline_s=20, speed=100.0)
    assert wanted_workers(fast, settings()) == 1
    assert decide([fast], [worker("w1", busy=True)]) == []


def test_required_rate_from_the_queue_is_used_when_given() -> None:
    # the earliest deadline is far, but some later work is due sooner than the sum suggests
    assert wanted_workers(demand(jobs=3, work=30, deadline_s=300, rate=25.0), settings()) == 3


def test_never_more_workers_than_jobs() -> None:
    assert wanted_workers(demand(jobs=2, work=10_000, deadline_s=1), settings()) == 2
    assert wanted_workers(demand(jobs=2, work=10_000, deadline_s=1, running=1), settings()) == 3


def test_a_first_worker_then_the_rest_in_one_tick() -> None:
    decisions = decide([demand(jobs=3, work=600, deadline_s=20)])
    assert [d.cause for d in decisions if d.action == "start"] == [
        "waiting",
        "deadline",
        "deadline",
    ]


def test_scale_up_cooldown_holds_further_starts_but_not_a_first_worker() -> None:
    history = {
        SMOL: ScaleHistory(last_start_at=NOW - 3),
        GEMMA: ScaleHistory(last_start_at=NOW - 3),
    }
    decisions = decide(
        [demand(jobs=10, work=1000, deadline_s=20), demand(GEMMA, jobs=1)],
        [worker("w1", busy=True)],
        history=history,
    )
    assert taken(decisions) == [("start", "gemma", None, "waiting")]
    (held,) = holds(decisions)
    assert (held.model, held.cause) == ("smol", "cooldown")
    later = decide(
        [demand(jobs=10, work=1000, deadline_s=20)],
        [worker("w1", busy=True)],
        history=history,
        now=NOW + 8,
    )
    assert len(taken(later)) == 4


def test_the_most_urgent_model_is_served_first() -> None:
    decisions = decide(
        [demand(SMOL, jobs=1, deadline_s=90), demand(GEMMA, jobs=1, deadline_s=15)],
        the_budget=budget(max_workers=1),
    )
    assert taken(decisions) == [("start", "gemma", None, "waiting")]
    assert [(d.model, d.cause) for d in holds(decisions)] == [("smol", "budget")]


# --- budget -----------------------------------------------------------------------------


def test_never_more_workers_than_the_budget() -> None:
    decisions = decide(
        [demand(jobs=10, work=1000, deadline_s=20)], the_budget=budget(max_workers=3)
    )
    assert len(taken(decisions)) == 3
    assert "workers 4 > 3" in holds(decisions)[0].reason


def test_memory_budget_counts_each_model_by_its_estimate() -> None:
    limits = budget(max_memory_mib=1000, memory_mib={"smol": 300, "minilm": 550})
    decisions = decide(
        [demand(jobs=10, work=1000, deadline_s=20), demand(MINILM, jobs=1, deadline_s=5)],
        [worker("e1", MINILM, busy=True)],
        the_budget=limits,
    )
    assert taken(decisions) == [("start", "smol", None, "waiting")]  # 550 + 300 <= 1000
    assert any("memory 1150 MiB > 1000 MiB" in d.reason for d in holds(decisions))


def test_thread_budget_counts_llm_threads() -> None:
    limits = budget(max_threads=5, llm_threads=2, embedding_threads=1)
    decisions = decide(
        [demand(jobs=10, work=1000, deadline_s=20)], [worker("e1", MINILM)], the_budget=limits
    )
    assert len(taken(decisions)) == 2  # 1 + 2 + 2 threads
    assert "threads 7 > 5" in holds(decisions)[0].reason


def test_gpu_slots_limit_workers_that_need_one() -> None:
    limits = budget(gpu_slots=1, gpu_need={"minilm": 1})
    decisions = decide([demand(MINILM, jobs=100, work=100, deadline_s=1)], the_budget=limits)
    assert taken(decisions) == [("start", "minilm", None, "waiting")]
    assert "GPU slots 2 > 1" in holds(decisions)[0].reason


def test_stopping_workers_still_count_against_the_budget() -> None:
    decisions = decide(
        [demand(jobs=1)], [worker("g1", GEMMA, stopping=True)], the_budget=budget(max_workers=1)
    )
    assert taken(decisions) == []
    assert "waiting for stopping workers to exit" in holds(decisions)[0].reason


# --- stopping ---------------------------------------------------------------------------


def test_unloads_a_worker_idle_for_long_enough() -> None:
    decisions = decide([], [worker("w1", idle_s=61)])
    assert taken(decisions) == [("stop", "smol", "w1", "idle")]
    assert "idle for 61 s" in decisions[0].reason
    assert decide([], [worker("w1", idle_s=59)]) == []


def test_never_stops_a_busy_worker() -> None:
    assert decide([], [worker("w1", busy=True, idle_s=1_000)]) == []


def test_never_stops_a_worker_of_a_model_with_queued_or_running_jobs() -> None:
    idle = [worker("w1", idle_s=1_000), worker("w2", idle_s=1_000)]
    assert decide([demand(jobs=1, work=1, deadline_s=3_600)], idle) == []
    assert decide([demand(jobs=0, running=1)], idle) == []


def test_never_below_the_minimum() -> None:
    decisions = decide(
        [],
        [worker("w1", idle_s=1_000), worker("w2", idle_s=500)],
        the_settings=settings(min_workers={SMOL: 1}),
    )
    assert taken(decisions) == [("stop", "smol", "w1", "idle")]  # the longest idle goes


def test_one_stop_per_model_per_down_cooldown() -> None:
    idle = [worker(f"w{i}", idle_s=100 + i) for i in range(3)]
    first = decide([], idle)
    assert len(taken(first)) == 1
    history = {SMOL: ScaleHistory(last_stop_at=NOW)}
    assert decide([], idle, history=history, now=NOW + 10) == []
    assert len(taken(decide([], idle, history=history, now=NOW + 31))) == 1


def test_a_recent_start_delays_idle_stops() -> None:
    history = {SMOL: ScaleHistory(last_start_at=NOW - 5)}
    assert decide([], [worker("w1", idle_s=100)], history=history) == []


# --- preemption -------------------------------------------------------------------------


def test_full_budget_stops_an_idle_worker_without_demand_to_make_room() -> None:
    limits = budget(max_workers=2)
    workers = [worker("g1", GEMMA, idle_s=5), worker("e1", MINILM, busy=True)]
    decisions = decide([demand(jobs=1)], workers, the_budget=limits)
    assert taken(decisions) == [("stop", "gemma", "g1", "preempt")]
    assert "makes room for smol" in decisions[0].reason
    # next tick: the stopped worker is still exiting, the start waits for it
    leaving = [replace(workers[0], stopping=True), workers[1]]
    assert taken(decide([demand(jobs=1)], leaving, the_budget=limits)) == []
    # once it has gone, the waiting model gets its worker
    assert taken(decide([demand(jobs=1)], workers[1:], the_budget=limits)) == [
        ("start", "smol", None, "waiting")
    ]


def test_preemption_never_stops_a_busy_worker() -> None:
    decisions = decide(
        [demand(jobs=1)], [worker("g1", GEMMA, busy=True)], the_budget=budget(max_workers=1)
    )
    assert taken(decisions) == []
    assert "no idle worker of a model without demand" in holds(decisions)[0].reason


def test_preemption_spares_models_in_demand_and_minimums() -> None:
    workers = [worker("g1", GEMMA, idle_s=50), worker("e1", MINILM, idle_s=50)]
    decisions = decide(
        [demand(jobs=1), demand(GEMMA, jobs=0, running=1)],
        workers,
        the_budget=budget(max_workers=2),
        the_settings=settings(min_workers={SMOL: 0, GEMMA: 0, MINILM: 1}),
    )
    assert taken(decisions) == []


def test_preemption_stops_nothing_when_it_cannot_make_enough_room() -> None:
    limits = budget(max_memory_mib=1000, memory_mib={"smol": 900, "gemma": 400, "minilm": 500})
    workers = [worker("g1", GEMMA, idle_s=50), worker("e1", MINILM, busy=True)]
    decisions = decide([demand(jobs=1)], workers, the_budget=limits)
    assert taken(decisions) == []  # stopping gemma frees 400 MiB, smol needs 900


def test_preemption_stops_as_many_idle_workers_as_needed() -> None:
    limits = budget(max_memory_mib=1000, memory_mib={"smol": 900, "gemma": 400, "minilm": 500})
    workers = [worker("g1", GEMMA, idle_s=50), worker("e1", MINILM, idle_s=20)]
    decisions = decide([demand(jobs=1)], workers, the_budget=limits)
    assert taken(decisions) == [
        ("stop", "gemma", "g1", "preempt"),
        ("stop", "minilm", "e1", "preempt"),
    ]


# --- no flapping --------------------------------------------------------------------------


class Simulation:
    """Applies the planner's decisions the way the supervisor does, one tick a second."""

    def __init__(self, the_settings: AutoscaleSettings, the_budget: Budget) -> None:
        self.settings = the_settings
        self.budget = the_budget
        self.now = NOW
        self.workers: dict[str, WorkerView] = {}
        self.history: dict[ModelKey, ScaleHistory] = {}
        self.serial = 0
        self.log: list[tuple[float, str]] = []

    def tick(self, demands: Sequence[Demand], busy: bool) -> None:
        self.now += 1.0
        self.workers = {k: w for k, w in self.workers.items() if not w.stopping}  # exited
        self.workers = {k: self._work(w, busy) for k, w in self.workers.items()}
        for d in decide(
            demands,
            list(self.workers.values()),
            the_budget=self.budget,
            the_settings=self.settings,
            history=self.history,
            now=self.now,
        ):
            self._apply(d)

    def _work(self, view: WorkerView, busy: bool) -> WorkerView:
        """Busy workers stay busy; one that just finished is idle from now."""
        if busy:
            return replace(view, busy=True)
        return replace(view, busy=False, idle_since=self.now) if view.busy else view

    def _apply(self, d: ScaleDecision) -> None:
        last = self.history.get(d.model_key, ScaleHistory())
        if d.action == "start":
            self.serial += 1
            key = f"w{self.serial}"
            self.workers[key] = WorkerView(
                key=key,
                role=d.role,
                model=d.model,
                busy=False,
                idle_since=self.now,
                started_at=self.now,
            )
            self.history[d.model_key] = last.after("start", self.now)
        elif d.action == "stop":
            assert d.worker_key is not None
            self.workers[d.worker_key] = replace(self.workers[d.worker_key], stopping=True)
            self.history[d.model_key] = last.after("stop", self.now)
        if d.action != "hold":
            self.log.append((self.now, d.action))


def test_demand_that_comes_and_goes_every_tick_does_not_flap() -> None:
    sim = Simulation(settings(idle_unload_s=30, scale_up_cooldown_s=5), budget(max_workers=6))
    burst = demand(jobs=6, work=600, deadline_s=20)  # 30 tokens/s: 3 workers at 10
    for tick in range(120):
        on = tick % 2 == 0
        sim.tick([burst] if on else [], busy=on)
    assert [action for _, action in sim.log] == ["start"] * 3
    assert len(sim.workers) == 3
    # demand gone for good: workers leave one at a time, after the idle time, never return
    for _ in range(200):
        sim.tick([], busy=False)
    stops = [when for when, action in sim.log if action == "stop"]
    assert len(stops) == 3 and not sim.workers
    assert stops[0] - (NOW + 120) >= 30
    assert all(b - a >= 30 for a, b in itertools.pairwise(stops))
    assert [action for _, action in sim.log] == ["start"] * 3 + ["stop"] * 3


def test_demand_swinging_around_the_threshold_keeps_the_larger_pool() -> None:
    sim = Simulation(settings(idle_unload_s=30, scale_up_cooldown_s=0), budget(max_workers=6))
    small = demand(jobs=4, work=400, deadline_s=20)  # 2 workers
    large = demand(jobs=8, work=800, deadline_s=20)  # 4 workers
    for tick in range(100):
        sim.tick([large if tick % 2 else small], busy=True)
    assert [action for _, action in sim.log] == ["start"] * 4


def test_workers_on_other_machines_count_as_capacity() -> None:
    elsewhere = replace(demand(jobs=10, work=1000, deadline_s=20), other_workers=2)
    decisions = decide([elsewhere], [worker("w1", busy=True)])
    assert taken(decisions) == [("start", "smol", None, "deadline")] * 2  # 5 wanted, 3 serve
    assert decide([replace(demand(jobs=1), other_workers=1)]) == []
