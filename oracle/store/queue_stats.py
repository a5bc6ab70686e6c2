"""What the queue asks of each model, and what each worker is doing: the autoscaler's input,
and the load admission weighs a new inference against (``inference_loads``).

Work is counted in one unit per kind of job: an inference's tokens, those it reads and
those it writes (``work_tokens`` in its payload: its prompt's tokens, estimated at
admission, plus its ``max_tokens``, an upper bound of what it generates; jobs queued
without it count their ``max_tokens``), one unit for an embedding or verification job.
Throughput is measured from the results of recent done jobs in the same unit: prompt
plus completion tokens over ``elapsed_s`` for inference (reading a long prompt is work,
not a slow model), jobs over the batch's ``elapsed_s`` for embeddings.
A job run alongside others (``batch`` in its result: an embedding claim's size, or the
sequences a batched LLM worker decoded together on average while it ran) counts for
``elapsed_s / batch`` of its worker's time, so the speed is a worker's throughput; a
batched job's own speed (tokens over its ``elapsed_s``) is measured apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from oracle.store.models import JobKind
from oracle.store.workers import ready_models, ready_slots

RECENT_JOBS = 50
"""Done jobs per model that the throughput is measured over..."""
RECENT_WINDOW_S = 3_600.0
"""...among those finished within this window (older speeds fall back to the prior)."""

_WORK = "COALESCE((payload->>'work_tokens')::float, (payload->>'max_tokens')::float, 1.0)"
"""An open job's work (an inference's tokens, else one unit)."""
_DONE_WORK = (
    "COALESCE((result->>'completion_tokens')::float"
    " + COALESCE((result->>'prompt_tokens')::float, 0.0), 1.0)"
)
"""A done job's work: the tokens an inference read and wrote, else one unit."""

QUEUED_SQL = text(
    f"""
    WITH open AS (
        SELECT model, status, deadline,
               sum({_WORK}) OVER (PARTITION BY model ORDER BY deadline, id) AS work_due,
               {_WORK} AS work
        FROM jobs
        WHERE status IN ('queued', 'running') AND kind = ANY(:kinds) AND model IS NOT NULL
    )
    SELECT model,
           count(*) FILTER (WHERE status = 'queued') AS queued_jobs,
           COALESCE(sum(work) FILTER (WHERE status = 'queued'), 0) AS queued_work,
           EXTRACT(EPOCH FROM min(deadline) FILTER (WHERE status = 'queued') - now())
               AS earliest_deadline_s,
           max(work_due / GREATEST(EXTRACT(EPOCH FROM deadline - now()), :floor_s))
               AS required_rate,
           count(*) FILTER (WHERE status = 'running') AS running_jobs
    FROM open
    GROUP BY model
    """
)
"""Queued and running work per model; ``required_rate`` counts running jobs' work in full
(how far they are is not known), so it errs towards more workers."""

THROUGHPUT_SQL = text(
    f"""
    WITH recent AS (
        SELECT model,
               {_DONE_WORK} AS work,
               (result->>'elapsed_s')::float
                   / GREATEST(COALESCE((result->>'batch')::float, 1.0), 1.0) AS seconds,
               (result->>'elapsed_s')::float AS own_seconds,
               row_number() OVER (PARTITION BY model ORDER BY finished_at DESC) AS age
        FROM jobs
        WHERE status = 'done' AND kind = ANY(:kinds) AND model IS NOT NULL
          AND result ? 'elapsed_s'
          AND finished_at > now() - make_interval(secs => :window_s)
    )
    SELECT model,
           sum(work) / NULLIF(sum(seconds), 0) AS work_per_s,
           sum(work) / NULLIF(sum(own_seconds), 0) AS job_work_per_s
    FROM recent
    WHERE age <= :recent
    GROUP BY model
    """
)

AHEAD_SQL = text(
    f"""
    SELECT model,
           count(*) AS jobs,
           count(*) FILTER (WHERE ahead) AS ahead_jobs,
           COALESCE(sum(tokens) FILTER (WHERE ahead), 0)::bigint AS ahead_tokens
    FROM (
        SELECT model,
               {_WORK} AS tokens,
               status = 'running'
                 OR pay_per_token_wei > :pay
                 OR (pay_per_token_wei = :pay AND deadline <= :deadline) AS ahead
        FROM jobs
        WHERE kind = 'inference' AND status IN ('queued', 'running') AND model = ANY(:models)
    ) AS open
    GROUP BY model
    """
)
"""Per model: open inferences, and those that run before a new one paying ``:pay`` per
token of work due at ``:deadline``: the running ones (they are not preempted) and the
queued ones the claim order (oracle.store.queue.CLAIM_SQL) puts first."""

ACTIVITY_SQL = text(
    """
    SELECT worker_id,
           count(*) FILTER (WHERE status = 'running') AS running_jobs,
           EXTRACT(EPOCH FROM now() - max(finished_at)) AS idle_for_s
    FROM jobs
    WHERE worker_id = ANY(:worker_ids)
    GROUP BY worker_id
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDemand:
    model: str
    queued_jobs: int = 0
    queued_work: float = 0.0
    earliest_deadline_s: float | None = None
    """Seconds from now to the earliest deadline of a queued job (negative: passed)."""
    required_rate: float | None = None
    """Work per second that finishes every queued and running job by its deadline."""
    running_jobs: int = 0
    work_per_s: float | None = None
    """Measured work per second of one worker; None when nothing has been measured."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoad:
    """What admission weighs a new inference against: the model's measured speed and the
    work the claim order runs before it."""

    tokens_per_s: float | None
    """Measured tokens (prompt and completion) per second of one worker, all its sequences
    together (``THROUGHPUT_SQL``); None: not measured."""
    sequence_tokens_per_s: float | None = None
    """Measured tokens per second of one job while it runs (below ``tokens_per_s`` when
    a worker decodes several together); None: not measured."""
    ahead_tokens: int = 0
    """Work (prompt and max_tokens) of the inferences that run before the new one: the
    running ones and the queued ones that pay more per token (or as much and are due no
    later)."""
    ahead_jobs: int = 0
    jobs: int = 0
    """Queued and running inferences of this model, whatever they pay."""
    workers: int | None = None
    """Live workers holding the model (autoscaled, or on other machines); None: unknown."""
    slots: int | None = None
    """Jobs those workers run at once, together (``workers.slots``); None: unknown."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerActivity:
    running_jobs: int
    idle_for_s: float | None
    """Seconds since it last finished a job; None when it never finished one."""


def model_demand(
    conn: Connection,
    *,
    kinds: Sequence[JobKind],
    deadline_floor_s: float = 1.0,
    recent: int = RECENT_JOBS,
) -> dict[str, ModelDemand]:
    """Demand by model for jobs of ``kinds``: every model with open jobs or a measured speed."""
    speeds = {
        str(row.model): float(row.work_per_s)
        for row in conn.execute(
            THROUGHPUT_SQL,
            {"kinds": list(kinds), "recent": recent, "window_s": RECENT_WINDOW_S},
        )
        if row.work_per_s is not None
    }
    demand = {model: ModelDemand(model=model, work_per_s=speed) for model, speed in speeds.items()}
    params = {"kinds": list(kinds), "floor_s": deadline_floor_s}
    for row in conn.execute(QUEUED_SQL, params):
        deadline = row.earliest_deadline_s
        demand[row.model] = ModelDemand(
            model=str(row.model),
            queued_jobs=int(row.queued_jobs),
            queued_work=float(row.queued_work),
            earliest_deadline_s=None if deadline is None else float(deadline),
            required_rate=float(row.required_rate),
            running_jobs=int(row.running_jobs),
            work_per_s=speeds.get(row.model),
        )
    return demand


def inference_loads(
    conn: Connection, models: Sequence[str], *, pay_per_token_wei: float, deadline: datetime
) -> dict[str, ModelLoad]:
    """The load of each of ``models`` as a new inference paying ``pay_per_token_wei`` per
    token of work (``oracle.lifecycle.admission.Offer``), due at ``deadline``, would meet
    it."""
    rows = conn.execute(
        THROUGHPUT_SQL,
        {"kinds": ["inference"], "recent": RECENT_JOBS, "window_s": RECENT_WINDOW_S},
    ).all()
    speeds = {str(r.model): float(r.work_per_s) for r in rows if r.work_per_s is not None}
    own = {str(r.model): float(r.job_work_per_s) for r in rows if r.job_work_per_s is not None}
    params = {"models": list(models), "pay": pay_per_token_wei, "deadline": deadline}
    open_work = {str(row.model): row for row in conn.execute(AHEAD_SQL, params)}
    workers = ready_models(conn)
    slots = ready_slots(conn)
    loads = {}
    for model in models:
        row = open_work.get(model)
        loads[model] = ModelLoad(
            tokens_per_s=speeds.get(model),
            sequence_tokens_per_s=own.get(model),
            ahead_tokens=int(row.ahead_tokens) if row else 0,
            ahead_jobs=int(row.ahead_jobs) if row else 0,
            jobs=int(row.jobs) if row else 0,
            workers=workers.get(model),
            slots=slots.get(model),
        )
    return loads


def worker_activity(conn: Connection, worker_ids: Sequence[str]) -> dict[str, WorkerActivity]:
    """Running jobs and idle time of each worker id that has any job on record."""
    if not worker_ids:
        return {}
    rows = conn.execute(ACTIVITY_SQL, {"worker_ids": list(worker_ids)})
    return {
        str(row.worker_id): WorkerActivity(
            running_jobs=int(row.running_jobs),
            idle_for_s=None if row.idle_for_s is None else float(row.idle_for_s),
        )
        for row in rows
    }
