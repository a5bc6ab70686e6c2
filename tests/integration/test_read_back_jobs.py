"""``readback`` jobs on both LLM engines, against the real Postgres queue with the real
SmolLM2 on the CPU: an answer the model wrote for the request's seed reads back within
the margin, the same answer with its tail rewritten does not, and on the batched engine
a read does not wait for the batch to drain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from oracle.consensus import DEFAULT_READ_BACK_MARGIN, read_back_fault
from oracle.engine.worker import LlmJobRunner, Worker, WorkerConfig
from oracle.lifecycle.hostile import RewrittenTail
from oracle.store.queue import PRIORITY_INFERENCE, PRIORITY_VERIFICATION, NewJob, enqueue_jobs
from tests.integration.test_batched_worker import (
    batched_worker,
    finished,
    payload,
    rows,
    wait_for,
)

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct-Q4_1"
FAR = datetime(2100, 1, 1, tzinfo=UTC)
ASK: dict[str, Any] = {
    "prompt": "Is 21 a prime number? Answer yes or no, with a reason.",
    "temperature_milli": 700,
    "max_tokens": 24,
    "seed": 2024,
}


def enqueue(engine: Engine, kind: str, payload: dict[str, Any]) -> int:
    priority = PRIORITY_VERIFICATION if kind == "readback" else PRIORITY_INFERENCE
    job = NewJob(kind=kind, model=SMOL, priority=priority, deadline=FAR, payload=payload)  # type: ignore[arg-type]
    with engine.begin() as conn:
        (job_id,) = enqueue_jobs(conn, [job])
    return job_id


def read_back(engine: Engine, answer: str) -> int:
    return enqueue(engine, "readback", {**ASK, "text": answer, "limit": DEFAULT_READ_BACK_MARGIN})


def fault(result: dict[str, Any]) -> str | None:
    return read_back_fault(
        model=SMOL,
        max_margin=result["max_margin"],
        worst_token=result["worst_token"],
        limit=DEFAULT_READ_BACK_MARGIN,
    )


def test_the_sequential_worker_reads_its_answer_back_and_tells_a_rewritten_tail(
    db_engine: Engine, database_url: str
) -> None:
    config = WorkerConfig(database_url=database_url, role="llm", model=SMOL, threads=2)
    worker = Worker(config, LlmJobRunner(SMOL, 2), db_engine)
    generated = enqueue(db_engine, "inference", ASK)
    assert worker.run_once()
    answer = rows(db_engine, [generated])[generated].result["text"]
    rewritten = RewrittenTail().answer_text(0, answer)
    honest, edited = read_back(db_engine, answer), read_back(db_engine, rewritten)
    assert worker.run_once() and worker.run_once()
    found = rows(db_engine, [honest, edited])

    assert found[honest].status == "done", found[honest].last_error
    assert found[honest].result["max_margin"] < 1.0  # one pass against token by token
    assert fault(found[honest].result) is None
    assert found[edited].status == "done", found[edited].last_error
    assert found[edited].result["max_margin"] is None  # no way of writing it comes close
    assert found[edited].result["worst_token"] > 0  # the honest first word reads back
    assert fault(found[edited].result) is not None
    # a read is not a generation: the queue's speed of the model is not measured from it
    assert "elapsed_s" not in found[honest].result


def test_the_batched_worker_reads_answers_back_between_decode_steps(
    db_engine: Engine, database_url: str
) -> None:
    with batched_worker(database_url, parallel=2) as worker:
        generated = enqueue(db_engine, "inference", ASK)
        wait_for(lambda: finished(db_engine, [generated]), "the answer")
        answer = rows(db_engine, [generated])[generated].result["text"]
        long_ask = payload("Write the numbers from 1 to 500, separated by commas.", 200, seed=1)
        long_job = enqueue(db_engine, "inference", long_ask)
        wait_for(lambda: worker.llm.active == 1, "the long job in the batch")
        honest = read_back(db_engine, answer)
        edited = read_back(db_engine, RewrittenTail().answer_text(0, answer))
        wait_for(lambda: finished(db_engine, [honest, edited, long_job]), "every job")
    found = rows(db_engine, [honest, edited, long_job])
    assert [found[i].status for i in (honest, edited, long_job)] == ["done"] * 3
    assert fault(found[honest].result) is None
    assert found[edited].result["max_margin"] is None
    assert fault(found[edited].result) is not None
    # the reads ran while the long generation was in the batch, not after it
    with db_engine.connect() as conn:
        ended = dict(
            conn.execute(
                text("SELECT id, finished_at FROM jobs WHERE id = ANY(:ids)"),
                {"ids": [honest, edited, long_job]},
            ).all()
        )
    assert max(ended[honest], ended[edited]) < ended[long_job]
    assert found[long_job].result["completion_tokens"] > 0
