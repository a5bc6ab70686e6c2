"""The batched LLM worker against the real Postgres queue, with the real SmolLM2 on the CPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from oracle.engine.batched import BatchedLlm, GenerationRequest
from oracle.engine.batched_worker import BatchedWorker, load_batched_llm
from oracle.engine.llm import Generation
from oracle.engine.llm_options import LlmEngineOptions
from oracle.engine.models import lookup_llm
from oracle.engine.worker import WorkerConfig
from oracle.store import make_engine
from oracle.store.notify import NotificationWaiter
from oracle.store.queue import JOBS_CHANNEL, PRIORITY_INFERENCE, NewJob, enqueue_jobs

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
TIMEOUT_S = 300.0
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def payload(
    prompt: str, max_tokens: int, seed: int, temperature_milli: int = 800
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "temperature_milli": temperature_milli,
        "max_tokens": max_tokens,
        "seed": seed,
    }


def enqueue(engine: Engine, *payloads: dict[str, Any], deadline: datetime = FAR) -> list[int]:
    jobs = [
        NewJob(
            kind="inference",
            model=SMOLLM,
            priority=PRIORITY_INFERENCE,
            deadline=deadline,
            payload=p,
        )
        for p in payloads
    ]
    with engine.begin() as conn:
        return enqueue_jobs(conn, jobs)


def rows(engine: Engine, ids: list[int]) -> dict[int, Any]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT id, status, result, last_error, attempts FROM jobs WHERE id = ANY(:ids)"),
            {"ids": ids},
        ).all()
    return {int(r.id): r for r in found}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.1)


def finished(engine: Engine, ids: list[int]) -> bool:
    return all(r.status in ("done", "dead") for r in rows(engine, ids).values())


@contextmanager
def batched_worker(database_url: str, parallel: int) -> Iterator[BatchedWorker]:
    config = WorkerConfig(
        database_url=database_url,
        role="llm",
        model=SMOLLM,
        threads=2,
        lease_s=3.0,
        poll_interval_s=0.5,
        llm=LlmEngineOptions(engine="batched", parallel=parallel, slot_tokens=256),
    )
    engine = make_engine(database_url)
    llm = load_batched_llm(config)
    worker = BatchedWorker(config, llm, engine)
    waiter = NotificationWaiter(database_url, [JOBS_CHANNEL])
    thread = threading.Thread(target=worker.run, args=(waiter.wait,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stopping.set()
        thread.join(timeout=TIMEOUT_S)
        waiter.close()
        engine.dispose()
        llm.close()
    assert not thread.is_alive()


def test_jobs_join_the_batch_as_slots_free_and_answer_as_alone(database_url: str) -> None:
    engine = make_engine(database_url)
    asks = [payload(f"Tell me a story about the number {i}.", 3 + i, seed=i) for i in range(5)]
    try:
        with batched_worker(database_url, parallel=2):
            ids = enqueue(engine, *asks)  # five jobs, two slots: three join mid-run
            wait_for(lambda: finished(engine, ids), "all jobs")
        found = rows(engine, ids)
    finally:
        engine.dispose()
    results = [found[i].result for i in ids]
    assert [found[i].status for i in ids] == ["done"] * 5
    for ask, result in zip(asks, results, strict=True):
        assert result["completion_tokens"] <= ask["max_tokens"]
        if result["finish_reason"] == "length":
            assert result["completion_tokens"] == ask["max_tokens"]
        assert result["seed"] == ask["seed"] and result["model"] == SMOLLM
    with BatchedLlm(lookup_llm(SMOLLM), parallel=1, threads=2, slot_tokens=256) as alone:
        for key, (ask, result) in enumerate(zip(asks, results, strict=True)):
            (outcome,) = alone.generate([GenerationRequest(key=key, **ask)])
            assert isinstance(outcome, Generation)
            assert outcome.text == result["text"]


def test_a_job_that_cannot_fit_fails_at_once_without_a_retry(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with batched_worker(database_url, parallel=2):
            too_long, fine = enqueue(
                engine, payload("Hi", max_tokens=10_000, seed=1), payload("Hi", 4, seed=2)
            )
            wait_for(lambda: finished(engine, [too_long, fine]), "both jobs")
        found = rows(engine, [too_long, fine])
    finally:
        engine.dispose()
    assert found[too_long].status == "dead" and found[too_long].attempts == 1
    assert "prompt tokens" in found[too_long].last_error
    assert found[fine].status == "done"


def test_a_job_taken_away_mid_batch_frees_its_slot(database_url: str) -> None:
    engine = make_engine(database_url)
    long_job = payload("Write the numbers from 1 to 500, separated by commas.", 200, seed=1)
    try:
        with batched_worker(database_url, parallel=1) as worker:
            (taken,) = enqueue(engine, long_job)
            wait_for(lambda: worker.llm.active == 1, "the long job in the batch")
            with engine.begin() as conn:  # as if its lease had run out: the queue took it back
                conn.execute(
                    text(
                        "UPDATE jobs SET status = 'dead', worker_id = NULL, "
                        "last_error = 'taken away' WHERE id = :id"
                    ),
                    {"id": taken},
                )
            (short,) = enqueue(engine, payload("Hi", 3, seed=2))
            wait_for(lambda: finished(engine, [short]), "the short job, in the freed slot")
            found = rows(engine, [taken, short])
            assert worker.llm.active == 0
    finally:
        engine.dispose()
    assert found[short].status == "done"
    assert found[taken].status == "dead" and found[taken].result is None


def test_a_job_past_its_deadline_is_cut_there(database_url: str) -> None:
    engine = make_engine(database_url)
    soon = datetime.now(UTC) + timedelta(seconds=0.8)
    try:
        with batched_worker(database_url, parallel=1):
            (job,) = enqueue(
                engine,
                payload("Write the numbers from 1 to 500, separated by commas.", 200, seed=1),
                deadline=soon,
            )
            wait_for(lambda: finished(engine, [job]), "the job to end")
        found = rows(engine, [job])[job]
    finally:
        engine.dispose()
    assert found.status == "dead" and "deadline" in found.last_error
