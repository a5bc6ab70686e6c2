"""A claimed job crosses to the runner's process whole: every field, none defaulted."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from oracle.engine.runner_process import _unwire, _wire
from oracle.store.queue import ClaimedJob


def test_a_job_crosses_with_every_field() -> None:
    job = ClaimedJob(
        id=2**62,
        kind="verification",
        request_id=2**256 - 1,
        model="all-MiniLM-L6-v2",
        priority=1,
        deadline=datetime(2026, 12, 1, 23, 59, 59, 999_999, tzinfo=ZoneInfo("Asia/Kolkata")),
        payload={"text": "Ünïcode \x00 text", "fit": {"model": "m", "max_tokens": 32}},
        attempts=2,
        max_attempts=3,
        pay_per_token_wei=float("inf"),
    )
    fields = _wire(job)
    assert len(fields) == len(dataclasses.fields(ClaimedJob))  # a new field must cross too
    assert all(
        getattr(job, f.name) != f.default for f in dataclasses.fields(ClaimedJob)
    )  # so a field dropped on the way could not come back equal by its default
    again = _unwire(pickle.loads(pickle.dumps(fields)))
    assert again == job
    assert again.deadline.astimezone(UTC) == job.deadline.astimezone(UTC)
