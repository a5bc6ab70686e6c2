"""Periodic queue upkeep: leases of dead workers, jobs past their deadline, old rows."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import Engine

from oracle.store.queue import expire_overdue_jobs, prune_finished_jobs, reclaim_expired_leases

logger = logging.getLogger(__name__)

KEEP_FINISHED_JOBS = timedelta(days=1)


def maintain_queue(engine: Engine, keep_finished: timedelta = KEEP_FINISHED_JOBS) -> dict[str, int]:
    with engine.begin() as conn:
        counts = {
            "reclaimed": reclaim_expired_leases(conn),
            "expired": expire_overdue_jobs(conn),
            "pruned": prune_finished_jobs(conn, older_than=keep_finished),
        }
    if any(counts.values()):
        logger.info("queue upkeep", extra=counts)
    return counts
