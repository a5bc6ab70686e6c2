"""The supervisor on a real database: demand queries, autoscaling real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, text

from oracle.engine.autoscale import ScaleDecision
from oracle.engine.supervisor import WorkerSpec, WorkerSupervisor, autoscaling_for
from oracle.engine.worker import make_worker_id
from oracle.store.maintenance import maintain_queue
from oracle.store.queue import claim_jobs, complete_job, enqueue_job
from oracle.store.queue_stats import model_demand, worker_activity
from oracle.store.workers import announce_worker, live_workers

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"
TIMEOUT_S = 180.0


def _enqueue(
    engine: Engine,
    *,
    kind: str = "inference",
    model: str = SMOLLM,
    deadline_s: float = 60.0,
    max_tokens: int | None = 8,
) -> int:
    payload: dict[str, Any] = {"text": "hello"}
    if max_tokens is not None:
        payload = {
            "prompt": "Say hello.",
            "temperature_milli": 0,
            "max_tokens": max_tokens,
            "seed": 1,
        }
    with engine.begin() as conn:
        return enqueue_job(
            conn,
            kind=kind,  # type: ignore[arg-type]
            model=model,
            priority=1,
            deadline=datetime.now(UTC) + timedelta(seconds=deadline_s),
            payload=payload,
        )


def _statuses(engine: Engine) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status, worker_id FROM jobs"))
        return {int(r.id): (str(r.status), r.worker_id) for r in rows}


# --- demand from the queue ----------------------------------------------------------------


def test_demand_counts_work_deadlines_running_jobs_and_measured_speed(db_engine: Engine) -> None:
    soon = _enqueue(db_engine, deadline_s=10, max_tokens=100)
    _enqueue(db_engine, deadline_s=40, max_tokens=300)
    for _ in range(3):
        _enqueue(db_engine, kind="verification", model=MINILM, max_tokens=None)
    with db_engine.begin() as conn:
        (running,) = claim_jobs(
            conn, worker_id="w:1:smol", kinds=["inference"], models=[SMOLLM], limit=1
        )
    assert running.id == soon
    done = _enqueue(db_engine, deadline_s=50, max_tokens=50)
    with db_engine.begin() as conn:
        (claimed,) = claim_jobs(
            conn, worker_id="w:2:smol", kinds=["inference"], models=[SMOLLM], limit=1
        )
        assert claimed.id != done  # the earlier deadline first; complete whichever it is
        complete_job(
            conn,
            job_id=claimed.id,
            worker_id="w:2:smol",
            result={"completion_tokens": 200, "elapsed_s": 4.0},
        )
    with db_engine.connect() as conn:
        llm = model_demand(conn, kinds=["inference"])[SMOLLM]
        embedding = model_demand(conn, kinds=["embedding", "verification"])[MINILM]
        activity = worker_activity(conn, ["w:1:smol", "w:2:smol", "w:3:smol"])
    assert (llm.queued_jobs, llm.queued_work, llm.running_jobs) == (1, 50, 1)
    assert llm.earliest_deadline_s is not None and 40 < llm.earliest_deadline_s <= 50
    # the running job's 100 tokens are due in 10 s: at least 10 tokens/s
    assert llm.required_rate is not None and llm.required_rate >= 10
    assert llm.work_per_s == pytest.approx(50.0)
    assert (embedding.queued_jobs, embedding.queued_work, embedding.work_per_s) == (3, 3, None)
    assert activity["w:1:smol"].running_jobs == 1
    assert activity["w:2:smol"].running_jobs == 0
    assert activity["w:2:smol"].idle_for_s is not None and activity["w:2:smol"].idle_for_s < 60
    assert "w:3:smol" not in activity


def test_live_workers_come_from_the_presence_table(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        announce_worker(conn, worker_id="far:7:smol", host="far", pid=7, role="llm", model=SMOLLM)
    with db_engine.connect() as conn:
        assert live_workers(conn) == {("llm", SMOLLM): {"far:7:smol"}}


# --- real worker processes ------------------------------------------------------------------


@pytest.fixture
def supervisor(database_url: str) -> Iterator[WorkerSupervisor]:
    """Autoscaling SmolLM2 workers from zero: at most two, unloaded after 2 idle seconds."""
    spec = WorkerSpec(role="llm", model=SMOLLM, threads=1)
    scaling = autoscaling_for(
        [spec], min_workers={spec.key: 0}, max_workers=2, max_threads=2, idle_unload_s=2.0
    )
    quick = replace(scaling.settings, scale_up_cooldown_s=0.0, scale_down_cooldown_s=0.0)
    sup = WorkerSupervisor(database_url, autoscaling=replace(scaling, settings=quick))
    try:
        yield sup
    finally:
        sup.stop()


def _drive(
    sup: WorkerSupervisor, engine: Engine, until: Callable[[], bool], what: str
) -> list[ScaleDecision]:
    """Tick the supervisor as the node does until ``until()`` holds."""
    decisions: list[ScaleDecision] = []
    give_up = time.monotonic() + TIMEOUT_S
    while not until():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        sup.check()
        decisions += [d for d in sup.autoscale_tick(engine) if d.action != "hold"]
        time.sleep(0.2)
    return decisions


def _metrics(sup: WorkerSupervisor) -> str:
    registry = CollectorRegistry()
    registry.register(sup.metrics)
    return generate_latest(registry).decode()


@pytest.mark.slow
def test_workers_start_for_waiting_jobs_and_unload_when_idle(
    supervisor: WorkerSupervisor, db_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oracle.engine.supervisor")
    assert supervisor.autoscale_tick(db_engine) == []  # nothing queued, no minimum: no worker
    # 6 x 64 tokens due in 10 s at the prior 30 tokens/s per worker: 2 workers
    jobs = [_enqueue(db_engine, deadline_s=10, max_tokens=64) for _ in range(6)]
    started = _drive(supervisor, db_engine, lambda: len(supervisor.pids) == 2, "two workers")
    assert [(d.action, d.cause) for d in started] == [("start", "waiting"), ("start", "deadline")]
    worker_ids = set(supervisor.worker_ids().values())

    def all_finished() -> bool:
        return all(_statuses(db_engine)[j][0] in ("done", "dead") for j in jobs)

    more = _drive(supervisor, db_engine, all_finished, "jobs finished")
    assert not [d for d in more if d.action == "stop"]  # never while its model has jobs
    # a machine too slow for the 10 s deadline stops the late generations there (dead)
    done = [_statuses(db_engine)[j] for j in jobs if _statuses(db_engine)[j][0] == "done"]
    assert done and {worker_id for _status, worker_id in done} <= worker_ids
    assert f'oracle_workers{{model="{SMOLLM}",role="llm"}} 2.0' in _metrics(supervisor)

    stopped = _drive(supervisor, db_engine, lambda: not supervisor.pids, "idle unload")
    assert [(d.action, d.cause) for d in stopped] == [("stop", "idle"), ("stop", "idle")]
    assert all("idle for" in d.reason for d in stopped)
    supervisor.check()  # forgets the workers that exited
    text_metrics = _metrics(supervisor)
    assert 'oracle_autoscale_decisions_total{action="start",cause="waiting"} 1.0' in text_metrics
    assert 'oracle_autoscale_decisions_total{action="stop",cause="idle"} 2.0' in text_metrics
    with db_engine.connect() as conn:  # they retired cleanly (SIGTERM, not SIGKILL)
        assert live_workers(conn) == {}
    taken = ("scaling: worker started", "scaling: worker stopping")
    logged = [r for r in caplog.records if r.getMessage() in taken]
    assert [getattr(r, "cause", None) for r in logged] == ["waiting", "deadline", "idle", "idle"]
    assert all(getattr(r, "reason", "") and getattr(r, "model", "") == SMOLLM for r in logged)


@pytest.mark.slow
def test_a_crashed_worker_is_restarted(database_url: str, db_engine: Engine) -> None:
    spec = WorkerSpec(role="llm", model=SMOLLM, threads=1)
    sup = WorkerSupervisor(
        database_url,
        autoscaling=autoscaling_for([spec], min_workers={spec.key: 1}, max_workers=1),
    )
    try:
        _drive(sup, db_engine, lambda: len(sup.pids) == 1, "the minimum worker")
        (first,) = sup.pids
        os.kill(first, signal.SIGKILL)
        _drive(sup, db_engine, lambda: bool(sup.pids) and sup.pids != [first], "a restart")
        assert sup.counts() == {spec.key: 1}  # restarted in place, not scaled
    finally:
        sup.stop()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_worker_killed_or_frozen_mid_job_is_replaced_and_the_job_done_once(
    fault: str, database_url: str, db_engine: Engine
) -> None:
    """SIGKILL (a crash, the OOM killer) or SIGSTOP (a process stuck where no clock check
    reaches): the supervisor restarts the worker, killing the frozen one once its
    heartbeat has been silent too long, and the job goes to the new worker."""
    spec = WorkerSpec(role="llm", model=SMOLLM, threads=1, lease_s=3.0)
    sup = WorkerSupervisor(database_url, [spec], wedged_after_s=3.0, settled_s=0.0)
    try:
        sup.start()
        (first,) = sup.pids
        first_id = make_worker_id(SMOLLM, first)

        def present() -> bool:
            with db_engine.connect() as conn:
                return first_id in live_workers(conn).get(("llm", SMOLLM), set())

        _drive(sup, db_engine, present, "the worker to load its model")
        with db_engine.begin() as conn:
            job = enqueue_job(
                conn,
                kind="inference",
                model=SMOLLM,
                priority=1,
                deadline=datetime.now(UTC) + timedelta(minutes=5),
                payload={
                    "prompt": "Write the numbers from 1 to 500, separated by commas.",
                    "temperature_milli": 700,
                    "max_tokens": 200,
                    "seed": 1,
                },
            )
        _drive(sup, db_engine, lambda: _statuses(db_engine)[job][0] == "running", "the claim")
        os.kill(first, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)

        def done() -> bool:
            sup.tend(db_engine)
            maintain_queue(db_engine)
            return _statuses(db_engine)[job][0] == "done"

        _drive(sup, db_engine, done, "the job to be done by a new worker")
        (second,) = sup.pids
        assert second != first
        with db_engine.connect() as conn:
            attempts = conn.scalar(text("SELECT attempts FROM jobs WHERE id = :id"), {"id": job})
            live = live_workers(conn).get(("llm", SMOLLM), set())
        assert _statuses(db_engine)[job][1] == make_worker_id(SMOLLM, second)
        assert attempts == 2
        assert first_id not in live  # the dead worker no longer counts as ready
    finally:
        sup.stop()


def test_workers_start_without_the_node_secrets(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, password = "0x" + "ab" * 32, "correct horse battery staple"
    monkeypatch.setenv("ORACLE_PRIVATE_KEY", key)
    monkeypatch.setenv("ORACLE_KEYSTORE_PASSWORD", password)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sup = WorkerSupervisor(database_url, [WorkerSpec(role="llm", model=SMOLLM)])
    try:
        sup.start()
        (pid,) = sup.pids
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        sup.stop()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert "ORACLE_PRIVATE_KEY" not in names and "ORACLE_KEYSTORE_PASSWORD" not in names
    assert key.encode() not in environ and password.encode() not in environ
    assert {"ORACLE_DATABASE_URL", "PATH", "OMP_NUM_THREADS"} <= names


def test_workers_outlive_a_failure_of_their_supervision(
    database_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node starts a failed part again: its workers must still be there for it."""
    sup = WorkerSupervisor(database_url, [WorkerSpec(role="llm", model=SMOLLM)])
    checks = 0
    check = sup.check

    def failing_once() -> None:
        nonlocal checks
        checks += 1
        if checks == 2:
            raise RuntimeError("a bug in a supervision tick")
        check()

    monkeypatch.setattr(sup, "check", failing_once)
    stop = asyncio.Event()
    try:
        with pytest.raises(RuntimeError):
            asyncio.run(sup.run(stop, interval_s=0.05, engine=db_engine))
        (pid,) = sup.pids
        assert Path(f"/proc/{pid}").exists()  # still running, still in its slot

        async def take_over() -> None:
            again = asyncio.Event()
            task = asyncio.create_task(sup.run(again, interval_s=0.05, engine=db_engine))
            await asyncio.sleep(0.3)
            assert sup.pids == [pid]  # the same worker, not a second one
            again.set()
            await asyncio.wait_for(task, timeout=30)

        asyncio.run(take_over())
        assert sup.pids == []  # a stop stops them
    finally:
        sup.stop()


@pytest.mark.slow
def test_workers_stop_when_the_process_that_started_them_is_killed(
    database_url: str, db_engine: Engine
) -> None:
    """A node killed outright (SIGKILL, the OOM killer) runs no cleanup: its workers must
    not go on claiming beside the set a restarted node starts (on a GPU they would hold
    the model's memory twice). Here the supervising process is `oracle worker` with two
    models, as an operator runs it on a GPU machine."""
    env = {**os.environ, "ORACLE_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "oracle.cli", "worker", "--models", MINILM, SMOLLM]
    supervising = subprocess.Popen([*command, "--threads", "1"], env=env)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(pids) < 2 and time.monotonic() < deadline and supervising.poll() is None:
            time.sleep(0.5)
            with db_engine.connect() as conn:
                pids = [int(pid) for pid in conn.scalars(text("SELECT pid FROM workers"))]
        assert len(pids) == 2, "the workers did not start"

        supervising.kill()
        supervising.wait()
        deadline = time.monotonic() + TIMEOUT_S
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.5)

        assert not [pid for pid in pids if _running(pid)]
        with db_engine.connect() as conn:  # each stopped as on SIGTERM, and said so
            stopped = conn.scalar(text("SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL"))
        assert stopped == 2
    finally:
        supervising.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
