"""The job queue: enqueue, claim, heartbeat, complete, retry, reclaim, expire, prune.

The claim query is the heart of it: within a priority class, the job that earns the most
per token of work (prompt and output: ``oracle.lifecycle.admission.Offer``) first, then
the earliest deadline
(``ORDER BY priority, pay_per_token_wei DESC, deadline, id``), taken with
``FOR UPDATE SKIP LOCKED`` so workers never wait on each other, and served by the partial
index ``ix_jobs_queued_claim_order`` (``migrations/versions/0007_paying_work_first.py``).
A worker claims jobs of its one model, whose seconds per token are about the same for
every job, so pay per token is pay per second of worker time: a flood of cheap jobs waits
behind a paying one. Admission (``oracle.lifecycle.admission``) admits a job only when it
can finish in time behind the work this order puts first. A claim is a lease: the worker
must heartbeat before ``lease_expires_at``, or the job goes back to the queue and a late
answer from the old worker is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from oracle.errors import OracleError
from oracle.store.models import JobKind
from oracle.store.notify import notify
from oracle.store.wakes import wake_requests

JOBS_CHANNEL = "oracle_jobs"
"""NOTIFY channel: a job was queued (payload: its kind)."""
JOBS_DONE_CHANNEL = "oracle_jobs_done"
"""NOTIFY channel: jobs finished (payload: their request id, or empty for none or several)."""

PRIORITY_VERIFICATION = 0
PRIORITY_EMBEDDING = 1
PRIORITY_INFERENCE = 1


class LeaseLost(OracleError):
    """The job's lease ran out and it went to another worker; this result is refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedJob:
    id: int
    kind: JobKind
    request_id: int | None
    model: str | None
    priority: int
    deadline: datetime
    payload: Mapping[str, Any]
    attempts: int
    max_attempts: int
    pay_per_token_wei: float = 0.0

    @property
    def claim_order(self) -> tuple[int, float, datetime, int]:
        """The claim query's ORDER BY, as a sort key."""
        return (self.priority, -self.pay_per_token_wei, self.deadline, self.id)


CLAIM_SQL = text(
    """
    WITH next AS (
        SELECT id FROM jobs
        WHERE status = 'queued'
          AND kind = ANY(:kinds)
          AND model = ANY(:models)
          AND run_after <= now()
        ORDER BY priority, pay_per_token_wei DESC, deadline, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE jobs AS j
        SET status = 'running',
            worker_id = :worker_id,
            attempts = j.attempts + 1,
            heartbeat_at = now(),
            lease_expires_at = now() + make_interval(secs => :lease_s)
        FROM next
        WHERE j.id = next.id
        RETURNING j.id, j.kind, j.request_id, j.model, j.priority, j.deadline, j.payload,
                  j.attempts, j.max_attempts, j.pay_per_token_wei
    )
    SELECT coalesce(json_agg(json_build_array(
               id, kind, request_id, model, priority, deadline, payload,
               attempts, max_attempts, pay_per_token_wei)), '[]')
    FROM claimed
    """
)
"""Claims and returns the jobs as one JSON array of rows, read by one ``json.loads``
instead of a row of ten values each (with a JSON document a payload): reading a claim
of 2,048 took an embedding worker's interpreter 35-37 ms on the development machine row
by row, 19-22 ms as one array, and on a GPU that interpreter is also the encoder's. JSON
holds every value exactly: a uint256, a timestamp to the microsecond with its offset, a
double in its shortest exact form, an infinite pay as the string ``"Infinity"`` (which
``float`` reads)."""


def claim_jobs(
    conn: Connection,
    *,
    worker_id: str,
    kinds: Sequence[JobKind],
    models: Sequence[str],
    limit: int = 1,
    lease_s: float = 30.0,
) -> list[ClaimedJob]:
    """Lease up to ``limit`` queued jobs this worker can run, the first in claim order."""
    rows = conn.execute(
        CLAIM_SQL,
        {
            "kinds": list(kinds),
            "models": list(models),
            "limit": limit,
            "worker_id": worker_id,
            "lease_s": lease_s,
        },
    ).scalar_one()
    jobs = [_claimed(*row) for row in rows]
    return sorted(jobs, key=lambda j: j.claim_order)


def _claimed(
    id: int,
    kind: JobKind,
    request_id: int | None,
    model: str | None,
    priority: int,
    deadline: str,
    payload: Mapping[str, Any],
    attempts: int,
    max_attempts: int,
    pay_per_token_wei: float | str,
) -> ClaimedJob:
    """A job from a row of CLAIM_SQL's array, in its order."""
    return ClaimedJob(
        id=id,
        kind=kind,
        request_id=request_id,
        model=model,
        priority=priority,
        deadline=datetime.fromisoformat(deadline),
        payload=payload,
        attempts=attempts,
        max_attempts=max_attempts,
        pay_per_token_wei=float(pay_per_token_wei),
    )


def enqueue_job(
    conn: Connection,
    *,
    kind: JobKind,
    model: str,
    priority: int,
    deadline: datetime,
    payload: Mapping[str, Any],
    request_id: int | None = None,
    max_attempts: int = 3,
    pay_per_token_wei: float = 0.0,
) -> int:
    """Queue a job and wake the workers (the NOTIFY is delivered on commit)."""
    job_id: int = conn.execute(
        text(
            """
            INSERT INTO jobs (kind, request_id, model, priority, deadline, payload, max_attempts,
                              pay_per_token_wei)
            VALUES (:kind, :request_id, :model, :priority, :deadline, CAST(:payload AS jsonb),
                    :max_attempts, :pay_per_token_wei)
            RETURNING id
            """
        ),
        {
            "kind": kind,
            "request_id": request_id,
            "model": model,
            "priority": priority,
            "deadline": deadline,
            "payload": json.dumps(dict(payload)),
            "max_attempts": max_attempts,
            "pay_per_token_wei": pay_per_token_wei,
        },
    ).scalar_one()
    notify(conn, JOBS_CHANNEL, kind)
    return job_id


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    kind: JobKind
    model: str
    priority: int
    deadline: datetime
    payload: Mapping[str, Any]
    request_id: int | None = None
    max_attempts: int = 3
    pay_per_token_wei: float = 0.0


def enqueue_jobs(conn: Connection, jobs: Sequence[NewJob]) -> list[int]:
    """Queue many jobs with one INSERT and one wake-up (what a burst of requests needs)."""
    if not jobs:
        return []
    ids = conn.execute(
        text(
            """
            INSERT INTO jobs (kind, request_id, model, priority, deadline, payload, max_attempts,
                              pay_per_token_wei)
            SELECT kind, request_id, model, priority, deadline, payload, max_attempts,
                   pay_per_token_wei
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
                kind text, request_id numeric, model text, priority smallint,
                deadline timestamptz, payload jsonb, max_attempts integer,
                pay_per_token_wei double precision)
            RETURNING id
            """
        ),
        {"rows": json.dumps([_row(job) for job in jobs])},
    ).scalars()
    job_ids = [int(i) for i in ids]
    notify(conn, JOBS_CHANNEL, "batch")
    return job_ids


def _row(job: NewJob) -> dict[str, Any]:
    return {
        "kind": job.kind,
        "request_id": job.request_id,
        "model": job.model,
        "priority": job.priority,
        "deadline": job.deadline.isoformat(),
        "payload": dict(job.payload),
        "max_attempts": job.max_attempts,
        "pay_per_token_wei": job.pay_per_token_wei,
    }


def complete_jobs(
    conn: Connection, *, worker_id: str, results: Mapping[int, Mapping[str, Any]]
) -> list[int]:
    """Record a batch's results in one statement; returns the ids refused (lease lost).

    The rows are driven by an array of ids, whose length the planner sees: with a row set
    it cannot count (``jsonb_to_recordset`` counts as 100 rows) and fresh statistics that
    expect one running job of the worker, it joined the two in a nested loop that read the
    whole set once per row, 0.3 s for 1,024 results (``bench/embed.py``). The results
    travel as one JSON array (a text array's quoting costs the client more), read by index;
    what comes back is two arrays (the ids recorded, their requests), not a row a job.
    """
    if not results:
        return []
    recorded, request_ids = conn.execute(
        text(
            """
            WITH done AS (
                UPDATE jobs AS j
                SET status = 'done', result = r.result, finished_at = now(),
                    lease_expires_at = NULL, heartbeat_at = now()
                FROM (
                    SELECT id, CAST(:results AS jsonb) -> CAST(n - 1 AS integer) AS result
                    FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS u(id, n)
                ) AS r
                WHERE j.id = r.id AND j.worker_id = :worker_id AND j.status = 'running'
                RETURNING j.id, j.request_id
            )
            SELECT ARRAY(SELECT id FROM done),
                   ARRAY(SELECT DISTINCT request_id FROM done)
            """
        ),
        {
            "worker_id": worker_id,
            "ids": bigint_array(results),
            "results": json.dumps(list(results.values()), default=dict),
        },
    ).one()
    if recorded:
        _notify_done(conn, *(None if i is None else int(i) for i in request_ids))
    done = set(recorded)
    return [i for i in results if i not in done]


def bigint_array(ids: Iterable[int]) -> str:
    """``ids`` as a Postgres array literal, for ``CAST(... AS bigint[])``: a seventh of
    what psycopg's list dumper costs, which checks each element on its own (about 7 us,
    a tenth of a second for 16,384 ids)."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def heartbeat(conn: Connection, *, job_id: int, worker_id: str, lease_s: float = 30.0) -> None:
    """Extend the lease; raises LeaseLost when the job is no longer this worker's."""
    if heartbeat_jobs(conn, job_ids=[job_id], worker_id=worker_id, lease_s=lease_s):
        raise LeaseLost(f"job {job_id}, worker {worker_id}")


def heartbeat_jobs(
    conn: Connection, *, job_ids: Sequence[int], worker_id: str, lease_s: float = 30.0
) -> list[int]:
    """Extend the leases of a batch in one statement; returns the ids no longer this worker's."""
    if not job_ids:
        return []
    kept = conn.execute(
        text(
            """
            UPDATE jobs SET heartbeat_at = now(),
                            lease_expires_at = now() + make_interval(secs => :lease_s)
            WHERE id = ANY(CAST(:ids AS bigint[])) AND worker_id = :worker_id
              AND status = 'running'
            RETURNING id
            """
        ),
        {"ids": bigint_array(job_ids), "worker_id": worker_id, "lease_s": lease_s},
    ).scalars()
    still_ours = {int(i) for i in kept}
    return [i for i in job_ids if i not in still_ours]


def complete_job(
    conn: Connection, *, job_id: int, worker_id: str, result: Mapping[str, Any]
) -> None:
    """Record the result; refused (LeaseLost) when the lease went to another worker."""
    if complete_jobs(conn, worker_id=worker_id, results={job_id: result}):
        raise LeaseLost(f"job {job_id}, worker {worker_id}")


def fail_job(
    conn: Connection,
    *,
    job_id: int,
    worker_id: str,
    error: str,
    retry_after_s: float | None,
) -> str:
    """Record a failure: back to the queue after ``retry_after_s`` while attempts remain,
    else ``dead`` with the error kept. ``retry_after_s=None`` means never retry.
    Returns the job's new status."""
    row = conn.execute(
        text(
            """
            UPDATE jobs SET
                status = CASE WHEN :retry AND attempts < max_attempts THEN 'queued' ELSE 'dead' END,
                run_after = now() + make_interval(secs => :delay),
                last_error = :error,
                worker_id = NULL, lease_expires_at = NULL,
                finished_at = CASE WHEN :retry AND attempts < max_attempts THEN NULL ELSE now() END
            WHERE id = :id AND worker_id = :worker_id AND status = 'running'
            RETURNING status, request_id
            """
        ),
        {
            "id": job_id,
            "worker_id": worker_id,
            "error": error,
            "retry": retry_after_s is not None,
            "delay": retry_after_s or 0.0,
        },
    ).first()
    if row is None:
        raise LeaseLost(f"job {job_id}, worker {worker_id}")
    if row.status == "dead":
        _notify_done(conn, row.request_id)
    return str(row.status)


def reclaim_expired_leases(conn: Connection) -> int:
    """Give running jobs whose worker stopped heartbeating back to the queue; bury those
    out of attempts or past their deadline (a worker stuck past it stops heartbeating)."""
    rows = conn.execute(
        text(
            """
            UPDATE jobs SET
                status = CASE WHEN attempts < max_attempts AND deadline > now()
                              THEN 'queued' ELSE 'dead' END,
                finished_at = CASE WHEN attempts < max_attempts AND deadline > now()
                                   THEN NULL ELSE now() END,
                last_error = 'lease expired: worker ' || worker_id || ' stopped heartbeating'
                             || CASE WHEN deadline > now() THEN '' ELSE ', past the deadline' END,
                worker_id = NULL, lease_expires_at = NULL
            WHERE status = 'running' AND lease_expires_at < now()
            RETURNING id, status, request_id
            """
        )
    ).all()
    if any(r.status == "queued" for r in rows):
        notify(conn, JOBS_CHANNEL, "reclaimed")
    dead = {row.request_id for row in rows if row.status == "dead"}
    if dead:
        _notify_done(conn, *dead)
    return len(rows)


def expire_overdue_jobs(conn: Connection) -> int:
    """Jobs still queued past their deadline can no longer help anyone."""
    rows = conn.execute(
        text(
            """
            UPDATE jobs SET status = 'expired', finished_at = now(),
                            last_error = 'deadline passed before a worker took it'
            WHERE status = 'queued' AND deadline < now()
            RETURNING request_id
            """
        )
    ).all()
    if rows:
        _notify_done(conn, *{row.request_id for row in rows})
    return len(rows)


def expire_queued_jobs(
    conn: Connection, *, request_id: int, kinds: Sequence[JobKind], reason: str
) -> list[tuple[str, dict[str, Any]]]:
    """Expire a request's jobs of these kinds that no worker has taken yet (what they
    would compute can no longer be used); their kinds and payloads."""
    rows = conn.execute(
        text(
            """
            UPDATE jobs SET status = 'expired', finished_at = now(), last_error = :reason
            WHERE request_id = :request_id AND kind = ANY(:kinds) AND status = 'queued'
            RETURNING kind, payload
            """
        ),
        {"request_id": request_id, "kinds": list(kinds), "reason": reason},
    ).all()
    return [(str(row.kind), dict(row.payload)) for row in rows]


def prune_finished_jobs(conn: Connection, *, older_than: timedelta) -> int:
    """Delete finished jobs so the table does not grow without bound."""
    return conn.execute(
        text(
            """
            DELETE FROM jobs
            WHERE status IN ('done', 'dead', 'expired', 'failed')
              AND finished_at < now() - make_interval(secs => :age_s)
            """
        ),
        {"age_s": older_than.total_seconds()},
    ).rowcount


def _notify_done(conn: Connection, *request_ids: int | None) -> None:
    """Jobs ended: their requests have news (kept until the lifecycle looks), and the node
    is told, in two statements however many requests (a claim of embeddings spans many)."""
    wake_requests(conn, request_ids, "job")
    distinct = set(request_ids)
    only = next(iter(distinct)) if len(distinct) == 1 else None
    notify(conn, JOBS_DONE_CHANNEL, "" if only is None else str(only))
