"""Admission's time estimate on workers that decode many jobs together (batched): a
worker's throughput drains the work ahead, a job's own speed times its maxTokens."""

from __future__ import annotations

import pytest

from oracle.lifecycle.admission import Admit, ModelLoad, Refuse
from oracle.lifecycle.context import ModelProfile
from tests.unit.test_admission import FAST, context, decide

# one GPU worker of 256 slots: 9,000 tokens/s together, 35 a job when all are busy


def estimate(load: ModelLoad, *, max_tokens: int = 64, deadline_s: float = 600) -> float:
    decision = decide({FAST: load}, models=(FAST,), max_tokens=max_tokens, deadline_s=deadline_s)
    assert isinstance(decision, Admit), decision
    return decision.estimate_s


def test_while_a_slot_is_free_only_the_job_s_own_tokens_count() -> None:
    busy = ModelLoad(
        tokens_per_s=9_000,
        sequence_tokens_per_s=35,
        workers=1,
        slots=256,
        ahead_jobs=255,
        ahead_tokens=255 * 64,
        jobs=255,
    )
    assert estimate(busy) == pytest.approx(64 / 35)
    # the same queue on a worker that runs one job at a time: all of it, at 35 tokens/s
    alone = ModelLoad(
        tokens_per_s=35, workers=1, slots=1, ahead_jobs=255, ahead_tokens=255 * 64, jobs=255
    )
    assert estimate(alone) == pytest.approx((255 * 64 + 64) / 35)


def test_past_the_slots_the_jobs_that_must_end_first_drain_at_the_worker_s_throughput() -> None:
    queued = ModelLoad(
        tokens_per_s=9_000,
        sequence_tokens_per_s=35,
        workers=1,
        slots=256,
        ahead_jobs=1_000,
        ahead_tokens=1_000 * 64,
        jobs=1_000,
    )
    must_end = 1_000 - 256 + 1
    assert estimate(queued) == pytest.approx(must_end * 64 / 9_000 + 64 / 35)


def test_two_workers_share_the_wait() -> None:
    queued = ModelLoad(
        tokens_per_s=9_000,
        sequence_tokens_per_s=35,
        workers=2,
        slots=512,
        ahead_jobs=1_000,
        ahead_tokens=64_000,
        jobs=1_000,
    )
    assert estimate(queued) == pytest.approx((1_000 - 511) * 64 / (2 * 9_000) + 64 / 35)


def test_unmeasured_a_job_gets_its_worker_s_share_and_the_profile_gives_the_slots() -> None:
    ctx = context(ModelProfile(name=FAST, context_tokens=2048, prior_tokens_per_s=8_000, slots=200))
    decision = decide({}, models=(FAST,), ctx=ctx)
    assert isinstance(decision, Admit)
    assert decision.estimate_s == pytest.approx(64 / (8_000 / 200))


def test_a_deep_queue_on_a_batched_worker_is_still_declined() -> None:
    queued = ModelLoad(
        tokens_per_s=9_000,
        sequence_tokens_per_s=35,
        workers=1,
        slots=256,
        ahead_jobs=100_000,
        ahead_tokens=6_400_000,
        jobs=100_000,
    )
    decision = decide({FAST: queued}, models=(FAST,), deadline_s=60)
    assert isinstance(decision, Refuse)
    assert "behind 100000 running or better-paying jobs" in decision.reason
