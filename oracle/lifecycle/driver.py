"""Runs the lifecycle over the requests that need a look: those with news, and those whose
next check by the clock has come. Nothing else is touched, so a pass costs what changed,
not what is open.

For each such request: what the chain must be asked is read first, holding no lock; then
the request's row is locked, its news taken, the state machine advanced
(``oracle.lifecycle.steps``) and the time of its next check written, in one transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from oracle.lifecycle.context import ChainCalls, NodeContext
from oracle.lifecycle.steps import FOLLOWED, Step, advance
from oracle.lifecycle.transitions import dispute_deadline_question, load_seats
from oracle.lifecycle.turn import NO_READS, ChainReads
from oracle.store.models import Request
from oracle.store.wakes import due_requests, take_wakes

logger = logging.getLogger(__name__)


def advance_requests(
    sessions: sessionmaker[Session],
    ctx: NodeContext,
    chain: ChainCalls,
    now: datetime | None = None,
) -> int:
    """One pass over the requests with news or a check due; returns how many it looked at."""
    now = now or datetime.now(UTC)
    with sessions() as session:
        ids = due_requests(session, now)
    for request_id in ids:
        _advance_one(sessions, ctx, chain, now, request_id)
    return len(ids)


def _advance_one(
    sessions: sessionmaker[Session],
    ctx: NodeContext,
    chain: ChainCalls,
    now: datetime,
    request_id: int,
) -> None:
    try:
        reads = _read_chain_first(sessions, chain, request_id)
        with sessions.begin() as session:
            # the row lock keeps a second pass (or a second node process on this database) out
            request = session.get(Request, request_id, with_for_update={"skip_locked": True})
            if request is None:
                _forget_if_gone(session, request_id)
                return
            take_wakes(session, request_id)
            next_check = None
            if request.phase in FOLLOWED:
                next_check = advance(Step(session, request, ctx, chain, now, reads))
            request.next_check_at = next_check
    except Exception:
        # One request's trouble (an RPC hiccup, a bad row) must not stop the others. Its
        # news and its due check stay where they were: the next pass tries again.
        logger.exception("step failed; will retry", extra={"request_id": request_id})


def _read_chain_first(
    sessions: sessionmaker[Session], chain: ChainCalls, request_id: int
) -> ChainReads:
    """Ask the chain what the request's transitions will need, holding no lock and no
    transaction: an RPC call may take seconds. The transitions re-check under the lock
    that the seats are still those the answer was read for."""
    with sessions() as session:
        request = session.get(Request, request_id)
        if request is None:
            return NO_READS
        question = dispute_deadline_question(request, load_seats(session, request_id))
    if question is None:
        return NO_READS
    deadline = chain.dispute_deadline(request_id, as_of=question.as_of)
    return ChainReads(dispute_deadlines={question: datetime.fromtimestamp(deadline, tz=UTC)})


def _forget_if_gone(session: Session, request_id: int) -> None:
    """News for a request that is not (or no longer) stored: drop it. A request whose row
    another pass holds is left alone (its news stays for the next pass)."""
    if session.get(Request, request_id) is None:
        take_wakes(session, request_id)
