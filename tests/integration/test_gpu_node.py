"""A GPU node's workers, on the CPU: ``oracle run --engine batched --gpu-layers -1`` with
two GPUs named, each holding one batched worker by its memory estimate. Each worker starts
with ``CUDA_VISIBLE_DEVICES`` naming its GPU (llama.cpp built for the CPU ignores the
layers), announces its slots, and admission's loads count them and the worker's measured
throughput beside a job's own speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from oracle.config import NodeSettings
from oracle.engine.gpus import GpuPlacementError
from oracle.engine.supervisor import WorkerSupervisor
from oracle.node import worker_supervisor
from oracle.store.queue import NewJob, enqueue_jobs
from oracle.store.queue_stats import inference_loads
from oracle.store.workers import ready_slots

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
PARALLEL = 4
TIMEOUT_S = 240.0
GPU_NODE = NodeSettings(
    rpc_urls=("http://127.0.0.1:1",),
    contract="0x" + "11" * 20,
    private_key="0x" + "22" * 32,
    models=(SMOLLM,),
    embedding_models=(),
    autoscale=False,
    llm_workers=2,
    llm_threads=1,
    llm_engine="batched",
    parallel=PARALLEL,
    slot_tokens=256,
    gpu_layers=-1,
    gpus=(0, 1),
    gpu_memory_mib=1_500.0,  # one worker's estimate (about 1,280 MiB) each, not two
)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.2)


@pytest.fixture
def gpu_node(database_url: str) -> Iterator[WorkerSupervisor]:
    supervisor = worker_supervisor(GPU_NODE, database_url)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


def _visible_devices(pid: int) -> str | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [v for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")]
    return found[0].split(b"=", 1)[1].decode() if found else None


def test_each_gpu_worker_gets_its_own_gpu_and_admission_counts_its_slots(
    db_engine: Engine, gpu_node: WorkerSupervisor
) -> None:
    assert sorted(_visible_devices(pid) or "" for pid in gpu_node.pids) == ["0", "1"]

    def ready() -> bool:
        with db_engine.connect() as conn:
            return ready_slots(conn).get(SMOLLM) == 2 * PARALLEL

    _wait_for(ready, "both workers to announce their slots")

    deadline = datetime.now(UTC) + timedelta(minutes=5)
    payload = {"prompt": "Name a colour.", "temperature_milli": 0, "max_tokens": 12, "seed": 1}
    jobs = [
        NewJob(kind="inference", model=SMOLLM, priority=1, deadline=deadline, payload=payload)
        for _ in range(6)
    ]
    with db_engine.begin() as conn:
        ids = enqueue_jobs(conn, jobs)

    def done() -> bool:
        with db_engine.connect() as conn:
            loads = inference_loads(conn, [SMOLLM], pay_per_token_wei=0, deadline=deadline)
        return loads[SMOLLM].jobs == 0

    _wait_for(done, f"jobs {ids} to be answered")
    with db_engine.connect() as conn:
        load = inference_loads(conn, [SMOLLM], pay_per_token_wei=0, deadline=deadline)[SMOLLM]
    assert (load.workers, load.slots) == (2, 2 * PARALLEL)
    assert load.tokens_per_s is not None and load.sequence_tokens_per_s is not None
    # a worker's throughput counts every job it decoded alongside: never below one job's
    assert load.tokens_per_s >= load.sequence_tokens_per_s


def test_gpu_workers_that_do_not_fit_the_gpus_are_refused_before_any_starts(
    database_url: str,
) -> None:
    with pytest.raises(GpuPlacementError, match="do not fit"):
        worker_supervisor(replace(GPU_NODE, llm_workers=3), database_url)
