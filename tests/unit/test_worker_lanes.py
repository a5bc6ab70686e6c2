"""Lanes of a worker: how many by role and device, and the order their batches run in."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from oracle.engine.worker import GPU_EMBED_LANES, Role, Turnstile, WorkerConfig

DEADLINE = datetime(2026, 1, 1, tzinfo=UTC)
WAIT_S = 30.0


def _config(role: Role, device: str, lanes: int | None = None) -> WorkerConfig:
    return WorkerConfig(
        database_url="postgresql://unused", role=role, model="m", device=device, embed_lanes=lanes
    )


@pytest.mark.parametrize(
    ("role", "device", "asked", "lanes"),
    [
        ("embedding", "cpu", None, 1),  # the cores encode: nothing to overlap
        ("embedding", "cuda", None, GPU_EMBED_LANES),
        ("embedding", "cuda:1", None, GPU_EMBED_LANES),
        ("embedding", "cpu", 2, 2),
        ("embedding", "cuda", 1, 1),
        ("llm", "cuda", 4, 1),  # one generation at a time: lanes would only hoard jobs
    ],
)
def test_lanes_by_role_and_device(role: Role, device: str, asked: int | None, lanes: int) -> None:
    assert _config(role, device, asked).lanes == lanes


@pytest.mark.parametrize(
    ("role", "device", "asked", "apart"),
    [
        ("embedding", "cpu", None, False),  # torch's threads leave the interpreter anyway
        ("embedding", "cuda", None, True),  # the encoder's host work needs the interpreter
        ("embedding", "cpu", True, True),
        ("embedding", "cuda:1", False, False),
        ("llm", "cuda", True, False),  # an LLM worker's runners are not built for it
    ],
)
def test_the_model_runs_in_a_process_of_its_own_on_a_gpu_unless_told(
    role: Role, device: str, asked: bool | None, apart: bool
) -> None:
    config = WorkerConfig(
        database_url="postgresql://unused",
        role=role,
        model="m",
        device=device,
        embed_process=asked,
    )
    assert config.runs_apart is apart


def test_waiting_batches_run_one_at_a_time_in_claim_order() -> None:
    turns = Turnstile()
    ran: list[str] = []
    running = threading.Event()
    release = threading.Event()
    overlaps: list[str] = []
    busy = threading.Lock()

    def batch(name: str, order: tuple[int, float, datetime, int]) -> None:
        with turns.turn(order):
            if not busy.acquire(blocking=False):
                overlaps.append(name)
                return
            try:
                ran.append(name)
                if name == "first":
                    running.set()
                    release.wait(WAIT_S)
            finally:
                busy.release()

    first = threading.Thread(target=batch, args=("first", (1, 0.0, DEADLINE, 1)))
    first.start()
    assert running.wait(WAIT_S)
    waiting = {
        "cheap embeddings": (1, 0.0, DEADLINE, 50),
        "verifications": (0, 0.0, DEADLINE, 90),  # priority 0: claimed last, runs first
        "paying inference": (1, -5.0, DEADLINE, 70),
        "earlier embeddings": (1, 0.0, DEADLINE, 40),
    }
    threads = [threading.Thread(target=batch, args=item) for item in waiting.items()]
    for thread in threads:
        thread.start()
    give_up = threading.Event()
    timer = threading.Timer(WAIT_S, give_up.set)
    timer.start()
    while turns.waiting < len(waiting):
        assert not give_up.wait(0.01), "the batches never queued up"
    timer.cancel()
    release.set()
    for thread in [first, *threads]:
        thread.join(WAIT_S)
    assert overlaps == []
    assert ran == [
        "first",
        "verifications",
        "paying inference",
        "earlier embeddings",
        "cheap embeddings",
    ]


def test_a_batch_that_fails_hands_its_turn_on() -> None:
    turns = Turnstile()
    order = (1, 0.0, DEADLINE, 1)
    with pytest.raises(RuntimeError), turns.turn(order):
        raise RuntimeError("the model crashed")
    done = threading.Event()

    def next_batch() -> None:
        with turns.turn(order):
            done.set()

    thread = threading.Thread(target=next_batch)
    thread.start()
    assert done.wait(WAIT_S)
    thread.join(WAIT_S)


def test_claims_and_forward_passes_by_device_unless_set() -> None:
    from oracle.engine.worker import EMBED_BATCH, GPU_EMBED_BATCH, GPU_EMBED_CLAIM

    cpu, gpu = _config("embedding", "cpu"), _config("embedding", "cuda")
    assert (cpu.claim, cpu.forward_batch) == (EMBED_BATCH, None)  # None: the Embedder's
    assert (gpu.claim, gpu.forward_batch) == (GPU_EMBED_CLAIM, GPU_EMBED_BATCH)
    chosen = WorkerConfig(
        database_url="postgresql://unused",
        role="embedding",
        model="m",
        device="cuda",
        embed_claim=100,
        embed_batch=10,
    )
    assert (chosen.claim, chosen.forward_batch) == (100, 10)
