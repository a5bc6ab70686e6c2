"""The Postgres job queue: claim order, leases, retries, expiry and the claim index."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from oracle.store.maintenance import maintain_queue
from oracle.store.queue import (
    CLAIM_SQL,
    LeaseLost,
    NewJob,
    claim_jobs,
    complete_job,
    complete_jobs,
    enqueue_job,
    enqueue_jobs,
    fail_job,
    heartbeat,
    heartbeat_jobs,
)
from oracle.store.queue_stats import inference_loads

MODEL = "SmolLM2-135M-Instruct-Q4_1"


def _enqueue(
    engine: Engine,
    *,
    deadline_s: float,
    priority: int = 1,
    kind: str = "inference",
    model: str = MODEL,
    pay: float = 0.0,
    max_tokens: int = 64,
) -> int:
    with engine.begin() as conn:
        return enqueue_job(
            conn,
            kind=kind,  # type: ignore[arg-type]
            model=model,
            priority=priority,
            deadline=datetime.now(UTC) + timedelta(seconds=deadline_s),
            payload={"n": deadline_s, "max_tokens": max_tokens},
            pay_per_token_wei=pay,
        )


def _claim(engine: Engine, worker: str = "w1", **kwargs: object) -> list[int]:
    with engine.begin() as conn:
        jobs = claim_jobs(
            conn,
            worker_id=worker,
            kinds=kwargs.pop("kinds", ["inference"]),  # type: ignore[arg-type]
            models=kwargs.pop("models", [MODEL]),
            **kwargs,
        )  # type: ignore[arg-type]
    return [j.id for j in jobs]


def _status(engine: Engine, job_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}))


def test_claims_most_urgent_first_and_priority_class_before_deadline(db_engine: Engine) -> None:
    late = _enqueue(db_engine, deadline_s=60)
    soon = _enqueue(db_engine, deadline_s=10)
    verification = _enqueue(db_engine, deadline_s=120, priority=0, kind="verification", model="emb")
    embedding = _enqueue(db_engine, deadline_s=5, priority=1, kind="embedding", model="emb")
    assert _claim(db_engine, limit=5) == [soon, late]
    assert _claim(db_engine, kinds=["verification", "embedding"], models=["emb"], limit=5) == [
        verification,
        embedding,
    ]


def test_better_paying_jobs_are_claimed_first_then_the_earliest_deadline(
    db_engine: Engine,
) -> None:
    cheap_soon = _enqueue(db_engine, deadline_s=10, pay=1e9)
    cheap_late = _enqueue(db_engine, deadline_s=60, pay=1e9)
    paying_late = _enqueue(db_engine, deadline_s=50, pay=4e13)
    free = _enqueue(db_engine, deadline_s=5)
    embedding = _enqueue(db_engine, deadline_s=1, kind="embedding", model="emb")
    assert _claim(db_engine, limit=1) == [paying_late]
    assert _claim(db_engine, limit=5) == [cheap_soon, cheap_late, free]
    assert _claim(db_engine, kinds=["embedding"], models=["emb"]) == [embedding]


def test_the_work_ahead_of_a_new_job_is_what_the_claim_runs_before_it(db_engine: Engine) -> None:
    """Admission's view of the queue (inference_loads) and the claim order agree: the jobs
    counted ahead of a new job are exactly those claimed before it, ties included."""
    rng = random.Random(7)
    pays = [0.0, 1e9, 1e9, 5e10, 4e13]
    for _ in range(40):
        _enqueue(db_engine, deadline_s=rng.choice([30, 60, 90]), pay=rng.choice(pays),
                 max_tokens=rng.choice([16, 256]))  # fmt: skip
    running = _claim(db_engine, worker="busy", limit=3)  # running now: ahead of anyone
    for pay in pays:
        for deadline_s in (30, 60, 90):
            with db_engine.connect() as conn:  # left without commit: rolled back
                (deadline,) = conn.execute(
                    text("SELECT deadline FROM jobs WHERE payload->>'n' = :n LIMIT 1"),
                    {"n": str(deadline_s)},
                ).one()
                load = inference_loads(conn, [MODEL], pay_per_token_wei=pay, deadline=deadline)[
                    MODEL
                ]
                new = enqueue_job(conn, kind="inference", model=MODEL, priority=1,
                                  deadline=deadline, payload={"max_tokens": 1},
                                  pay_per_token_wei=pay)  # fmt: skip
                claimed = claim_jobs(conn, worker_id="w", kinds=["inference"], models=[MODEL],
                                     limit=100)  # fmt: skip
                before = claimed[: [j.id for j in claimed].index(new)]
                assert load.ahead_jobs == len(running) + len(before), (pay, deadline_s)
                assert load.jobs == len(running) + len(claimed) - 1


def test_a_worker_only_takes_jobs_of_its_model(db_engine: Engine) -> None:
    _enqueue(db_engine, deadline_s=10, model="gemma-3-270m-Q4_K_M")
    assert _claim(db_engine) == []
    assert len(_claim(db_engine, models=["gemma-3-270m-Q4_K_M"])) == 1


def test_concurrent_claims_skip_locked_rows(db_engine: Engine) -> None:
    first, second = _enqueue(db_engine, deadline_s=10), _enqueue(db_engine, deadline_s=20)
    with db_engine.begin() as conn_a:
        a = claim_jobs(conn_a, worker_id="a", kinds=["inference"], models=[MODEL])
        # while a's transaction still holds its row, b gets the next one instead of waiting
        with db_engine.begin() as conn_b:
            b = claim_jobs(conn_b, worker_id="b", kinds=["inference"], models=[MODEL])
    assert [j.id for j in a] == [first]
    assert [j.id for j in b] == [second]


def test_an_expired_lease_goes_back_and_a_late_answer_is_refused(db_engine: Engine) -> None:
    job = _enqueue(db_engine, deadline_s=60)
    assert _claim(db_engine, worker="crashed", lease_s=0.01) == [job]
    with db_engine.begin() as conn:
        conn.execute(text("SELECT pg_sleep(0.05)"))
    assert maintain_queue(db_engine)["reclaimed"] == 1
    assert _claim(db_engine, worker="healthy") == [job]
    with db_engine.begin() as conn, pytest.raises(LeaseLost):
        complete_job(conn, job_id=job, worker_id="crashed", result={"text": "late"})
    with db_engine.begin() as conn, pytest.raises(LeaseLost):
        heartbeat(conn, job_id=job, worker_id="crashed")
    with db_engine.begin() as conn:
        complete_job(conn, job_id=job, worker_id="healthy", result={"text": "on time"})
        result = conn.scalar(text("SELECT result->>'text' FROM jobs WHERE id = :id"), {"id": job})
    assert result == "on time"


def test_a_lease_that_runs_out_past_the_deadline_buries_the_job_with_the_reason(
    db_engine: Engine,
) -> None:
    job = _enqueue(db_engine, deadline_s=0.05)  # a worker stuck past the job's deadline
    assert _claim(db_engine, worker="stuck", lease_s=0.01) == [job]
    with db_engine.begin() as conn:
        conn.execute(text("SELECT pg_sleep(0.1)"))
    assert maintain_queue(db_engine)["reclaimed"] == 1
    with db_engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, last_error, finished_at FROM jobs WHERE id = :id"), {"id": job}
        ).one()
    assert row.status == "dead" and row.finished_at is not None  # so that pruning reaches it
    assert row.last_error == "lease expired: worker stuck stopped heartbeating, past the deadline"


def test_a_batch_heartbeat_extends_its_leases_and_names_the_ones_lost(db_engine: Engine) -> None:
    kept, lost = _enqueue(db_engine, deadline_s=60), _enqueue(db_engine, deadline_s=60)
    assert sorted(_claim(db_engine, worker="w", limit=2, lease_s=0.01)) == [kept, lost]
    with db_engine.begin() as conn:  # the second lease runs out and goes to another worker
        conn.execute(text("SELECT pg_sleep(0.05)"))
        conn.execute(text("UPDATE jobs SET worker_id = 'other' WHERE id = :id"), {"id": lost})
    with db_engine.begin() as conn:
        assert heartbeat_jobs(conn, job_ids=[kept, lost], worker_id="w", lease_s=60) == [lost]
        expires = conn.scalar(
            text(
                "SELECT lease_expires_at > now() + interval '50 seconds' FROM jobs WHERE id = :id"
            ),
            {"id": kept},
        )
    assert expires is True


def test_failures_retry_with_backoff_then_die_with_the_error(db_engine: Engine) -> None:
    job = _enqueue(db_engine, deadline_s=600)
    for attempt in range(3):
        assert _claim(db_engine) == [job]
        with db_engine.begin() as conn:
            status = fail_job(
                conn, job_id=job, worker_id="w1", error=f"boom {attempt}", retry_after_s=0.0
            )
        assert status == ("dead" if attempt == 2 else "queued")
    with db_engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts, last_error FROM jobs WHERE id = :id"), {"id": job}
        ).one()
    assert tuple(row) == ("dead", 3, "boom 2")


def test_a_retry_waits_for_its_backoff(db_engine: Engine) -> None:
    job = _enqueue(db_engine, deadline_s=600)
    _claim(db_engine)
    with db_engine.begin() as conn:
        fail_job(conn, job_id=job, worker_id="w1", error="transient", retry_after_s=60)
    assert _claim(db_engine) == []
    assert _status(db_engine, job) == "queued"


def test_permanent_failure_is_not_retried(db_engine: Engine) -> None:
    job = _enqueue(db_engine, deadline_s=600)
    _claim(db_engine)
    with db_engine.begin() as conn:
        assert (
            fail_job(conn, job_id=job, worker_id="w1", error="prompt too long", retry_after_s=None)
            == "dead"
        )


def test_jobs_past_their_deadline_expire(db_engine: Engine) -> None:
    overdue = _enqueue(db_engine, deadline_s=-1)
    fresh = _enqueue(db_engine, deadline_s=60)
    assert maintain_queue(db_engine)["expired"] == 1
    assert _status(db_engine, overdue) == "expired"
    assert _claim(db_engine) == [fresh]


def test_claim_query_uses_the_partial_index(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO jobs (kind, model, priority, deadline, status, payload,
                                  pay_per_token_wei)
                SELECT 'inference', :model, 1, now() + (i || ' seconds')::interval,
                       CASE WHEN i % 10 = 0 THEN 'queued' ELSE 'done' END, '{}'::jsonb,
                       (i % 7) * 1e9
                FROM generate_series(1, 20000) AS i
                """
            ),
            {"model": MODEL},
        )
        conn.execute(text("ANALYZE jobs"))
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                text(f"EXPLAIN {CLAIM_SQL.text}"),
                {
                    "kinds": ["inference"],
                    "models": [MODEL],
                    "limit": 1,
                    "worker_id": "w",
                    "lease_s": 30.0,
                },
            )
        )
    assert "ix_jobs_queued_claim_order" in plan, plan


def test_a_batch_enqueues_and_completes_in_one_statement_each(db_engine: Engine) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    jobs = [
        NewJob(kind="embedding", model="emb", priority=1, deadline=deadline, payload={"text": t})
        for t in ("a", "b", "c")
    ]
    with db_engine.begin() as conn:
        ids = enqueue_jobs(conn, jobs)
    assert len(ids) == 3
    claimed = _claim(db_engine, worker="w1", kinds=["embedding"], models=["emb"], limit=2)
    assert claimed == ids[:2]
    with db_engine.begin() as conn:
        # the third job was never claimed by w1: its result is refused, the others recorded
        refused = complete_jobs(
            conn,
            worker_id="w1",
            results={ids[0]: {"bits": "00"}, ids[1]: {"bits": "01"}, ids[2]: {}},
        )
    assert refused == [ids[2]]
    assert [_status(db_engine, i) for i in ids] == ["done", "done", "queued"]
    with db_engine.connect() as conn:
        payload = conn.scalar(
            text("SELECT payload->>'text' FROM jobs WHERE id = :id"), {"id": ids[2]}
        )
    assert payload == "c"


def test_a_claimed_job_reads_back_exactly_what_was_queued(db_engine: Engine) -> None:
    """The claim returns its jobs as one JSON document: every value must come back as it
    went in, whatever the session's time zone, a uint256 request id, an infinite pay."""
    deadline = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    payload = {"text": 'Ça va? \u2603 "quoted"\n', "n": 2**70, "f": 0.1, "nested": [None, True]}
    queued = {
        "kind": "inference",
        "model": MODEL,
        "priority": 1,
        "deadline": deadline,
        "payload": payload,
        "request_id": 2**256 - 1,
        "max_attempts": 5,
    }
    with db_engine.begin() as conn:
        exact = enqueue_job(conn, **queued, pay_per_token_wei=1234.5678901234567)  # type: ignore[arg-type]
        endless = enqueue_job(conn, **queued, pay_per_token_wei=float("inf"))  # type: ignore[arg-type]
    with db_engine.begin() as conn:
        conn.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        jobs = claim_jobs(conn, worker_id="w", kinds=["inference"], models=[MODEL], limit=5)
    assert [job.id for job in jobs] == [endless, exact]  # the better pay first
    for job, pay in zip(jobs, (float("inf"), 1234.5678901234567), strict=True):
        assert (job.kind, job.model, job.priority, job.request_id) == (
            "inference",
            MODEL,
            1,
            2**256 - 1,
        )
        assert job.deadline == deadline
        assert job.deadline.utcoffset() is not None
        assert job.payload == payload
        assert (job.attempts, job.max_attempts) == (1, 5)
        assert job.pay_per_token_wei == pay


def test_a_batch_completion_wakes_each_request_once_and_refuses_what_is_not_ours(
    db_engine: Engine,
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    owners = [7, 7, None, 2**256 - 1, 9]
    jobs = [
        NewJob(
            kind="embedding",
            model="emb",
            priority=1,
            deadline=deadline,
            payload={},
            request_id=owner,
        )
        for owner in owners
    ]
    with db_engine.begin() as conn:
        ids = enqueue_jobs(conn, jobs)
    assert _claim(db_engine, worker="w1", kinds=["embedding"], models=["emb"], limit=4) == ids[:4]
    with db_engine.begin() as conn:
        refused = complete_jobs(
            conn, worker_id="w1", results={i: {"bits": f"{n:02x}"} for n, i in enumerate(ids)}
        )
    assert refused == [ids[4]]  # request 9's job was never claimed: no wake for it
    with db_engine.connect() as conn:
        wakes = conn.execute(text("SELECT request_id, reason FROM request_wakes")).all()
        results = conn.execute(
            text("SELECT result->>'bits' FROM jobs WHERE id = ANY(:ids) ORDER BY id"),
            {"ids": ids},
        ).scalars()
        assert list(results) == ["00", "01", "02", "03", None]
    assert sorted((int(w.request_id), w.reason) for w in wakes) == [(7, "job"), (2**256 - 1, "job")]
