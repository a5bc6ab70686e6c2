"""Runs the lifecycle's steps over every request that may need one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.lifecycle.context import ChainCalls, NodeContext
from oracle.lifecycle.steps import Step, advance
from oracle.lifecycle.transitions import dispute_deadline_question, load_seats
from oracle.lifecycle.turn import NO_READS, ChainReads
from oracle.store.models import OPEN_REQUEST_PHASES, Answer, Job, Request

logger = logging.getLogger(__name__)


def advance_requests(
    sessions: sessionmaker[Session],
    ctx: NodeContext,
    chain: ChainCalls,
    now: datetime | None = None,
) -> int:
    """One pass over the open (and skipped, not yet settled) requests; returns how many."""
    now = now or datetime.now(UTC)
    with sessions() as session:
        ids = list(
            session.scalars(
                select(Request.id)
                .where(or_(Request.phase.in_(OPEN_REQUEST_PHASES), Request.phase == "skipped"))
                .where(~_waiting_for_its_answer())
                .order_by(Request.commit_deadline)
            )
        )
    for request_id in ids:
        _advance_one(sessions, ctx, chain, now, request_id)
    return len(ids)


def _waiting_for_its_answer() -> ColumnElement[bool]:
    """Committing, no answer yet, and its inference or embedding job still queued or running.

    The commit step has nothing to do for such a request (it waits for the job, which has
    its own deadline and ends done, dead or expired), so a pass skips it: with many
    requests in flight most of them are here, and each would cost a transaction.
    """
    return and_(
        Request.phase == "committing",
        ~exists().where(Answer.request_id == Request.id),
        exists().where(Job.request_id == Request.id, Job.status.in_(("queued", "running"))),
    )


def _advance_one(
    sessions: sessionmaker[Session],
    ctx: NodeContext,
    chain: ChainCalls,
    now: datetime,
    request_id: int,
) -> None:
    try:
        reads = _read_chain_first(sessions, chain, request_id, now)
        with sessions.begin() as session:
            # the row lock keeps a second pass (or a second node process on this database) out
            request = session.get(Request, request_id, with_for_update={"skip_locked": True})
            if request is None:
                return
            advance(Step(session, request, ctx, chain, now, reads))
    except Exception:
        # one request's trouble (an RPC hiccup, a bad row) must not stop the others
        logger.exception("step failed; will retry", extra={"request_id": request_id})


def _read_chain_first(
    sessions: sessionmaker[Session], chain: ChainCalls, request_id: int, now: datetime
) -> ChainReads:
    """Ask the chain what the request's transitions will need, holding no lock and no
    transaction: an RPC call may take seconds. The transitions re-check under the lock
    that the seats are still those the answer was read for."""
    with sessions() as session:
        request = session.get(Request, request_id)
        if request is None:
            return NO_READS
        question = dispute_deadline_question(request, load_seats(session, request_id), now)
    if question is None:
        return NO_READS
    deadline = chain.dispute_deadline(request_id, as_of=question.as_of)
    return ChainReads(dispute_deadlines={question: datetime.fromtimestamp(deadline, tz=UTC)})
