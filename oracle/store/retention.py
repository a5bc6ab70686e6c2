"""Pruning: what the node no longer needs goes after the operator's retention.

Only what reached its end is ever deleted: finished requests (with their seats, answers
and jobs), chain events of no open request, and transactions confirmed, failed or
skipped. An open request, a request with a transaction still pending or in flight, and
such a transaction itself are kept however old they are.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, TextClause, text

from oracle.store.models import OPEN_REQUEST_PHASES

__all__ = ["FINAL_TX_STATUSES", "PRUNE_BATCH", "prune_old_rows"]

logger = logging.getLogger(__name__)

FINAL_TX_STATUSES = ("confirmed", "failed", "skipped")
"""Outbox states nothing changes any more; ``pending`` and ``sent`` are never pruned."""

PRUNE_BATCH = 5000
"""Rows per statement, so one run never holds long locks on a big backlog."""

_PRUNE_REQUESTS = text(
    """
    WITH doomed AS (
        SELECT r.id FROM requests r
        WHERE r.phase <> ALL(:open_phases) AND r.updated_at < now() - make_interval(secs => :age_s)
          AND NOT EXISTS (
              SELECT 1 FROM outgoing_txs t
              WHERE t.request_id = r.id AND t.status <> ALL(:final_statuses)
          )
        ORDER BY r.updated_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), jobs_gone AS (
        DELETE FROM jobs j
        WHERE j.request_id IN (SELECT id FROM doomed)
          AND j.status IN ('done', 'failed', 'dead', 'expired')
    )
    DELETE FROM requests WHERE id IN (SELECT id FROM doomed)
    """
)
"""Seats and answers go with their request (ON DELETE CASCADE)."""

_PRUNE_EVENTS = text(
    """
    DELETE FROM chain_events WHERE id IN (
        SELECT e.id FROM chain_events e
        WHERE e.created_at < now() - make_interval(secs => :age_s)
          AND NOT EXISTS (
              SELECT 1 FROM requests r
              WHERE r.id = e.request_id AND r.phase = ANY(:open_phases)
          )
        LIMIT :batch
    )
    """
)

_PRUNE_TXS = text(
    """
    DELETE FROM outgoing_txs WHERE id IN (
        SELECT t.id FROM outgoing_txs t
        WHERE t.status = ANY(:final_statuses)
          AND coalesce(t.confirmed_at, t.sent_at, t.created_at)
              < now() - make_interval(secs => :age_s)
          AND NOT EXISTS (
              SELECT 1 FROM requests r
              WHERE r.id = t.request_id AND r.phase = ANY(:open_phases)
          )
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    """
)


def prune_old_rows(
    engine: Engine, retention: timedelta, *, batch: int = PRUNE_BATCH
) -> dict[str, int]:
    """Delete what finished longer than ``retention`` ago; counts by kind of row."""
    params = {
        "age_s": retention.total_seconds(),
        "batch": batch,
        "open_phases": list(OPEN_REQUEST_PHASES),
        "final_statuses": list(FINAL_TX_STATUSES),
    }
    counts = {
        "requests": _in_batches(engine, _PRUNE_REQUESTS, params),
        "events": _in_batches(engine, _PRUNE_EVENTS, params),
        "transactions": _in_batches(engine, _PRUNE_TXS, params),
    }
    if any(counts.values()):
        logger.info("pruned old rows", extra={**counts, "retention_days": retention.days})
    return counts


def _in_batches(engine: Engine, statement: TextClause, params: dict[str, Any]) -> int:
    """Run a batch-limited DELETE until it finds less than a batch; each batch commits."""
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(statement, params).rowcount
        total += deleted
        if deleted < params["batch"]:
            return total
