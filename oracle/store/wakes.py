"""News for requests, kept until the request's lifecycle has looked at it.

Whoever brings news about a request (the listener storing a chain event for it, the
queue ending one of its jobs) writes a wake in the same transaction; the lifecycle's
next pass looks at exactly the woken requests, plus those whose ``next_check_at`` has
come, and deletes the wakes under the request's row lock. A wake takes no lock on the
request's row, so news never waits for the lifecycle. NOTIFY only says "look now": a
lost notification costs a poll interval, never the news.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, delete, insert, literal, select, union
from sqlalchemy.orm import Session

from oracle.store.models import OPEN_REQUEST_PHASES, Request, RequestWake

__all__ = ["due_requests", "take_wakes", "wake_requests", "wake_unsettled_requests"]


def wake_requests(conn: Connection, request_ids: Iterable[int | None], reason: str) -> None:
    """Record news for each request (None, a job of no request, is left out)."""
    rows = [
        {"request_id": i, "reason": reason}
        for i in sorted({i for i in request_ids if i is not None})
    ]
    if rows:
        conn.execute(insert(RequestWake), rows)


def wake_unsettled_requests(conn: Connection, reason: str) -> int:
    """Record news for every request not settled yet: a reorg rewound the chain under them."""
    phases = [*OPEN_REQUEST_PHASES, "skipped"]
    query = select(Request.id, literal(reason)).where(Request.phase.in_(phases))
    result = conn.execute(insert(RequestWake).from_select(["request_id", "reason"], query))
    return int(result.rowcount or 0)


def due_requests(session: Session, now: datetime) -> list[int]:
    """Requests with news, or whose next check by the clock has come (two index scans)."""
    woken = select(RequestWake.request_id)
    timed = select(Request.id).where(Request.next_check_at <= now)
    return [int(i) for i in session.scalars(union(woken, timed))]


def take_wakes(session: Session, request_id: int) -> int:
    """Delete the request's news; the caller holds its row lock and is about to look.

    First thing under the lock: news stored after this statement stays for the next pass.
    """
    result = session.execute(delete(RequestWake).where(RequestWake.request_id == request_id))
    return int(getattr(result, "rowcount", 0) or 0)
