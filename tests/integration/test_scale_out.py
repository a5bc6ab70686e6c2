"""Scale-out: `oracle worker` on "another machine" shares only the database with the node."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, text

from oracle.engine.supervisor import WorkerSpec, WorkerSupervisor, autoscaling_for
from oracle.store.queue import enqueue_job
from oracle.store.workers import ready_models

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"
TIMEOUT_S = 240.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.2)


class NodeSide:
    """The node's supervisor, run as ``Node.run`` runs it, in a thread with its own loop."""

    def __init__(self, supervisor: WorkerSupervisor, engine: Engine) -> None:
        self.supervisor = supervisor
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._engine = engine

    def _run(self) -> None:
        self._loop.run_until_complete(
            self.supervisor.run(self._stop, interval_s=0.2, engine=self._engine)
        )

    def __enter__(self) -> NodeSide:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        self._loop.close()


@pytest.fixture
def remote_worker(database_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``oracle worker --database-url URL --models A B``: one process per model."""
    log = (tmp_path / "remote.log").open("wb")
    command = [
        sys.executable, "-m", "oracle.cli", "worker", "--database-url", database_url,
        "--threads", "1", "--models", SMOLLM, MINILM,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ORACLE_DATABASE_URL"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _enqueue_many(engine: Engine, kind: str, model: str, count: int) -> list[int]:
    payload: dict[str, object] = {"text": "the sea at dawn"}
    if kind == "inference":
        payload = {"prompt": "Say hello.", "temperature_milli": 0, "max_tokens": 24, "seed": 1}
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    with engine.begin() as conn:
        return [
            enqueue_job(
                conn,
                kind=kind,  # type: ignore[arg-type]
                model=model,
                priority=1,
                deadline=deadline,
                payload=payload,
            )
            for _ in range(count)
        ]


def _done_by(engine: Engine, job_ids: list[int]) -> dict[int, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, worker_id FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids}
        )
        return {int(r.id): r.worker_id for r in rows if r.status == "done"}


def test_jobs_are_shared_by_the_node_and_a_separate_worker_process(
    database_url: str, db_engine: Engine, remote_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    spec = WorkerSpec(role="llm", model=SMOLLM, threads=1)
    node_workers = WorkerSupervisor(
        database_url,
        autoscaling=autoscaling_for([spec], min_workers={spec.key: 1}, max_workers=1),
    )
    with NodeSide(node_workers, db_engine):

        def both_ready() -> bool:
            with db_engine.connect() as conn:
                ready = ready_models(conn)
            return ready.get(SMOLLM, 0) == 2 and ready.get(MINILM, 0) == 1

        _wait_for(both_ready, "the node's worker and the remote workers")
        node_ids = set(node_workers.worker_ids().values())
        inference = _enqueue_many(db_engine, "inference", SMOLLM, 16)
        embedding = _enqueue_many(db_engine, "embedding", MINILM, 8)
        everything = inference + embedding
        _wait_for(lambda: len(_done_by(db_engine, everything)) == len(everything), "all jobs")
        done_by = _done_by(db_engine, everything)
        assert node_workers.counts() == {spec.key: 1}  # the remote one served, no extra here

    llm_workers = {done_by[j] for j in inference}
    assert len(llm_workers) == 2, f"inference done by {llm_workers}"
    assert node_ids < llm_workers  # the node's worker did some of them, the remote one the rest
    (remote_llm,) = llm_workers - node_ids
    (remote_embedding,) = {done_by[j] for j in embedding}
    for worker_id in (remote_llm, remote_embedding):  # host:pid:model, a child of `oracle worker`
        assert worker_id is not None
        assert psutil.Process(int(worker_id.split(":")[1])).ppid() == remote_worker.pid

    remote_worker.send_signal(signal.SIGTERM)
    assert remote_worker.wait(timeout=60) == 0
    with db_engine.connect() as conn:
        assert ready_models(conn) == {}  # every worker retired on its way out
