"""What the chain told us, in Postgres: raw events, the tables derived from them, and undo.

``apply_event`` is idempotent: a log is recorded once under ``(block_hash, log_index)``
and a replay changes nothing. ``rollback_after`` undoes what orphaned blocks brought,
using the block numbers every derived row keeps. A request this node already answered
is never deleted by a reorg, because its answer holds the salt of a commitment that may
still be (re)mined: it becomes ``orphaned`` instead (remembering its phase), and comes
back in that phase, with the new block's deadlines, if the new chain announces the very
same request again (same requester, prompt, models, parameters and fee).

Callers own the transaction: the listener applies a block range's events, its blocks
and its checkpoint in one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, Update, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from oracle.domain.events import (
    ChainEvent,
    CommittedEvent,
    DisputedEvent,
    FailedEvent,
    FailureReason,
    FinalizedEvent,
    RequestedEvent,
    RevealedEvent,
    SlashedEvent,
)
from oracle.domain.request import utc_from_unix
from oracle.store.models import Answer, ChainBlock, ChainCheckpoint, Request, Seat
from oracle.store.models import ChainEvent as ChainEventRow

__all__ = [
    "ORPHANED_REASON",
    "BlockRef",
    "apply_event",
    "delete_checkpoint",
    "disputes_against",
    "highest_checkpoint",
    "load_checkpoint",
    "prune_blocks",
    "recent_blocks",
    "record_block",
    "rollback_after",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

ORPHANED_REASON = "orphaned by reorg"

_FAILURE_TEXT: dict[FailureReason, str] = {
    "no_commits": "no commits",
    "no_reveals": "no reveals",
    "no_consensus": "no consensus",
    "expired": "expired: nobody finalized before expiresAt",
}
# Fields of InferenceRequested that do not depend on the block it landed in: the same
# request re-mined after a reorg agrees on these (its deadlines follow the new block).
_REQUEST_IDENTITY = (
    "requester",
    "prompt",
    "accepted_models",
    "temperature_milli",
    "max_tokens",
    "quorum",
    "max_time_ms",
    "sec_distance_bp",
    "sec_percentage_bp",
    "embedding_model",
    "callback",
    "callback_gas_limit",
    "fee_wei",
    # covers the seed too: a request mined again in another block draws another seed,
    # and commitments bound to the old hash can never be revealed there
    "request_hash",
    "seed",
    "callback_gas_price",
    "slash_bps",
    "dim_bits",
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockRef:
    """A block as the listener remembers it."""

    number: int
    hash: bytes
    parent_hash: bytes
    logs_bloom: bytes = b""
    """The header's logsBloom when read from the chain (not stored)."""
    timestamp: int | None = None
    """The header's timestamp when read from the chain (not stored)."""


# --- events ------------------------------------------------------------------------------


def apply_event(session: Session, event: ChainEvent) -> None:
    """Record ``event`` and update the tables derived from it; a replay is a no-op.

    Whatever the event carries, this returns: should the database refuse a value that
    got past decoding, the event is recorded without its effects (and logged), so that
    no transaction on the chain can stop the listener.
    """
    try:
        with session.begin_nested():
            if _record_raw(session, event):
                _apply(session, event)
    except (DataError, IntegrityError) as exc:
        refused = f"{type(exc.orig).__name__}: {exc.orig}"[:500]
        logger.error(
            "the database refused an event; recorded without its effects",
            extra={"request_id": event.request_id, "event": event.event_name, "error": refused},
        )
        with session.begin_nested():
            _record_raw(session, event, payload={"refused": refused})


def _apply(session: Session, event: ChainEvent) -> None:
    match event:
        case RequestedEvent():
            _apply_requested(session, event)
        case CommittedEvent():
            _apply_committed(session, event)
        case RevealedEvent():
            _apply_revealed(session, event)
        case FinalizedEvent():
            _apply_finalized(session, event)
        case FailedEvent():
            _apply_outcome(
                session, event, "failed", _FAILURE_TEXT[event.reason], event.position.block_number
            )
        case DisputedEvent():
            pass  # the raw row is the record; see disputes_against
        case SlashedEvent():
            _note_slash(event)


def disputes_against(session: Session, request_id: int) -> dict[str, set[str]]:
    """Who disputed whom on a request: accused address -> disputer addresses."""
    payloads = session.scalars(
        select(ChainEventRow.payload).where(
            ChainEventRow.request_id == request_id,
            ChainEventRow.event == DisputedEvent.event_name,
        )
    )
    disputes: dict[str, set[str]] = {}
    for payload in payloads:
        disputes.setdefault(payload["accused"], set()).add(payload["disputer"])
    return disputes


def _record_raw(session: Session, event: ChainEvent, payload: dict[str, Any] | None = None) -> bool:
    """Insert the raw log; False when ``(block_hash, log_index)`` was already there."""
    position = event.position
    statement = (
        insert(ChainEventRow)
        .values(
            block_number=position.block_number,
            block_hash=position.block_hash,
            log_index=position.log_index,
            tx_hash=position.tx_hash,
            event=event.event_name,
            request_id=event.request_id,
            payload=_payload(event) if payload is None else payload,
        )
        .on_conflict_do_nothing(index_elements=["block_hash", "log_index"])
        .returning(ChainEventRow.id)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def _payload(event: ChainEvent) -> dict[str, Any]:
    return {
        field.name: _jsonable(getattr(event, field.name))
        for field in dataclasses.fields(event)
        if field.name != "position"
    }


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


def _apply_requested(session: Session, event: RequestedEvent) -> None:
    values = {name: getattr(event, name) for name in _REQUEST_IDENTITY}
    values["accepted_models"] = list(event.accepted_models)
    if event.defects:  # a string field is not text: stored escaped, never served
        values["phase"] = "skipped"
        values["skip_reason"] = "declined: " + "; ".join(event.defects)
        logger.warning(
            "request declined: its strings are not usable text",
            extra={"request_id": event.request_id, "reason": values["skip_reason"]},
        )
    else:
        values["phase"] = "requested"
    statement = (
        insert(Request)
        .values(
            id=event.request_id,
            block_number=event.position.block_number,
            **_block_terms(event),
            **values,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Request.id)
    )
    if session.execute(statement).scalar_one_or_none() is None:
        _revive_if_orphaned(session, event)


def _revive_if_orphaned(session: Session, event: RequestedEvent) -> None:
    """The new chain announced a request id we orphaned: the same request lives again."""
    known = session.get(Request, event.request_id)
    if known is None or known.phase != "orphaned":
        return
    log = {"request_id": event.request_id, "block_number": event.position.block_number}
    if not _same_request(known, event):
        logger.warning(
            "the new chain reuses an orphaned request id for another request; keeping our "
            "answer to the old one and not serving the new one",
            extra=log,
        )
        return
    known.phase = known.phase_before_outcome or "requested"
    known.phase_before_outcome = None
    known.outcome_reason = None
    known.block_number = event.position.block_number
    for name, value in _block_terms(event).items():
        setattr(known, name, value)
    logger.info("orphaned request re-mined after a reorg; following it again", extra=log)


def _block_terms(event: RequestedEvent) -> dict[str, Any]:
    """The fields that follow the block the request landed in (times, registered nodes)."""
    return {
        "commit_deadline": utc_from_unix(event.commit_deadline),
        "reveal_deadline": utc_from_unix(event.reveal_deadline),
        "dispute_window_s": event.dispute_window_s,
        "expires_at": utc_from_unix(event.expires_at),
        "eligible_count": event.eligible_count,
    }


def _same_request(row: Request, event: RequestedEvent) -> bool:
    for name in _REQUEST_IDENTITY:
        stored = getattr(row, name)
        if name == "accepted_models":
            stored = tuple(stored)
        if stored != getattr(event, name):
            return False
    return True


def _followed(session: Session, request_id: int) -> bool:
    """Known to this node and not orphaned: derived tables may be updated."""
    phase = session.scalar(select(Request.phase).where(Request.id == request_id))
    return phase is not None and phase != "orphaned"


def _apply_committed(session: Session, event: CommittedEvent) -> None:
    """A commit takes its seat; one with a better ticket evicts the seat's holder first
    (the evicted row stays, marked, so that a reorg can give the seat back)."""
    if not _followed(session, event.request_id):
        logger.debug("commit for a request not followed", extra={"request_id": event.request_id})
        return
    if event.evicted is not None:
        _run(
            session,
            update(Seat)
            .where(
                Seat.request_id == event.request_id,
                Seat.oracle == event.evicted,
                Seat.seat_no == event.seat,
                Seat.evicted_block_number.is_(None),
            )
            .values(evicted_block_number=event.position.block_number),
        )
    statement = (
        insert(Seat)
        .values(
            request_id=event.request_id,
            seat_no=event.seat,
            oracle=event.oracle,
            commitment=event.commitment,
            ticket=event.ticket,
            commit_block_number=event.position.block_number,
        )
        .on_conflict_do_nothing(index_elements=["request_id", "oracle"])
    )
    session.execute(statement)
    session.expire_all()


def _apply_revealed(session: Session, event: RevealedEvent) -> None:
    if not _followed(session, event.request_id):
        logger.debug("reveal for a request not followed", extra={"request_id": event.request_id})
        return
    session.execute(
        update(Seat)
        .where(
            Seat.request_id == event.request_id,
            Seat.seat_no == event.seat,
            Seat.oracle == event.oracle,
            Seat.evicted_block_number.is_(None),
        )
        .values(
            revealed_output=event.output,
            output_hash=event.output_hash,
            reveal_defect=event.output_defect,
            model_index=event.model_index,
            embedding_bits=event.embedding_bits,
            reveal_block_number=event.position.block_number,
        )
    )


def _note_slash(event: SlashedEvent) -> None:
    """The raw row is the record (the stake is burnt, no table derives from it)."""
    logger.info(
        "a seat's stake was slashed",
        extra={
            "request_id": event.request_id,
            "oracle": event.oracle,
            "amount_wei": event.amount_wei,
            "reason": event.reason,
        },
    )


def _apply_finalized(session: Session, event: FinalizedEvent) -> None:
    reason = (
        f"finalized: seat {event.winner_seat} won with {event.cluster_size} in its cluster"
        f" ({event.model})"
    )
    callback = session.scalar(select(Request.callback).where(Request.id == event.request_id))
    if callback is not None and not event.callback_succeeded:
        reason += "; the callback reverted"
    _apply_outcome(session, event, "finalized", reason, event.position.block_number)


def _apply_outcome(
    session: Session,
    event: FinalizedEvent | FailedEvent,
    phase: str,
    reason: str,
    block_number: int,
) -> None:
    _run(
        session,
        update(Request)
        .where(Request.id == event.request_id, Request.phase != "orphaned")
        .values(
            # SET reads the row as it was: the phase the outcome replaces.
            phase_before_outcome=Request.phase,
            phase=phase,
            outcome_reason=reason,
            outcome_block_number=block_number,
        ),
    )
    session.expire_all()


# --- reorgs ------------------------------------------------------------------------------


def rollback_after(session: Session, block_number: int) -> None:
    """Undo everything blocks after ``block_number`` brought (the caller moves the checkpoint)."""
    after = block_number
    events = _run(session, delete(ChainEventRow).where(ChainEventRow.block_number > after))
    _run(session, delete(ChainBlock).where(ChainBlock.number > after))
    # A seat lost to a commit these blocks brought is held again: a node that stopped
    # there (evicted) goes back to committing, where it finds out whether it was its seat.
    # Asked before the seats go: when the evicted commit was in these blocks too, it is
    # sent again and may land, and only a committing node reveals it.
    regained = select(Seat.request_id).where(Seat.evicted_block_number > after)
    _run(
        session,
        update(Request)
        .where(Request.phase == "evicted", Request.id.in_(regained))
        .values(phase="committing", skip_reason=None),
    )
    seats = _run(session, delete(Seat).where(Seat.commit_block_number > after))
    _run(
        session,
        update(Seat).where(Seat.evicted_block_number > after).values(evicted_block_number=None),
    )
    _run(
        session,
        update(Seat)
        .where(Seat.reveal_block_number > after)
        .values(
            revealed_output=None,
            output_hash=None,
            reveal_defect=None,
            model_index=None,
            embedding_bits=None,
            reveal_block_number=None,
        ),
    )
    reopened = _run(
        session,
        update(Request)
        .where(Request.outcome_block_number > after)
        .values(
            # An outcome recorded before phase_before_outcome existed reopens for finalizing.
            phase=func.coalesce(Request.phase_before_outcome, "finalizing"),
            phase_before_outcome=None,
            outcome_reason=None,
            outcome_block_number=None,
        ),
    )
    orphaned, deleted = _drop_requests_after(session, after)
    session.expire_all()
    logger.info(
        "rolled back the chain state",
        extra={
            "after_block": after,
            "events_deleted": events,
            "seats_deleted": seats,
            "requests_reopened": reopened,
            "requests_orphaned": orphaned,
            "requests_deleted": deleted,
        },
    )


def _drop_requests_after(session: Session, after: int) -> tuple[int, int]:
    """Delete requests announced after ``after``, except answered ones: those are orphaned."""
    answered = exists().where(Answer.request_id == Request.id)
    orphaned = _run(
        session,
        update(Request)
        .where(Request.block_number > after, answered)
        .values(
            phase="orphaned", phase_before_outcome=Request.phase, outcome_reason=ORPHANED_REASON
        ),
    )
    deleted = _run(session, delete(Request).where(Request.block_number > after, ~answered))
    return orphaned, deleted


def _run(session: Session, statement: Update | Delete) -> int:
    """Execute a bulk UPDATE/DELETE (the caller expires the session after) and count rows."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


# --- blocks and checkpoints --------------------------------------------------------------


def load_checkpoint(session: Session, listener: str) -> BlockRef | None:
    """The last block ``listener`` fully processed (its parent hash from chain_blocks)."""
    checkpoint = session.get(ChainCheckpoint, listener)
    if checkpoint is None:
        return None
    block = session.get(ChainBlock, checkpoint.block_number)
    parent = block.parent_hash if block is not None else bytes(32)
    return BlockRef(number=checkpoint.block_number, hash=checkpoint.block_hash, parent_hash=parent)


def highest_checkpoint(session: Session) -> int | None:
    """The highest block any listener has processed: the chain the node's decisions rest on
    (None before the first)."""
    return session.scalar(select(func.max(ChainCheckpoint.block_number)))


def save_checkpoint(session: Session, listener: str, block: BlockRef) -> None:
    statement = insert(ChainCheckpoint).values(
        listener=listener, block_number=block.number, block_hash=block.hash
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listener"],
            set_={
                "block_number": statement.excluded.block_number,
                "block_hash": statement.excluded.block_hash,
                "updated_at": func.now(),
            },
        )
    )


def delete_checkpoint(session: Session, listener: str) -> None:
    """Forget where ``listener`` was: it starts again from its start block."""
    session.execute(delete(ChainCheckpoint).where(ChainCheckpoint.listener == listener))


def record_block(session: Session, block: BlockRef) -> None:
    """Remember a processed block (replacing what an earlier fork left at its number)."""
    session.execute(delete(ChainBlock).where(ChainBlock.hash == block.hash))
    statement = insert(ChainBlock).values(
        number=block.number, hash=block.hash, parent_hash=block.parent_hash
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["number"],
            set_={
                "hash": statement.excluded.hash,
                "parent_hash": statement.excluded.parent_hash,
                "recorded_at": func.now(),
            },
        )
    )


def recent_blocks(session: Session, limit: int) -> list[BlockRef]:
    """The remembered blocks, newest first."""
    rows = session.scalars(select(ChainBlock).order_by(ChainBlock.number.desc()).limit(limit))
    return [BlockRef(number=r.number, hash=r.hash, parent_hash=r.parent_hash) for r in rows]


def prune_blocks(session: Session, keep: int) -> None:
    """Forget all but the ``keep`` newest remembered blocks."""
    oldest_kept = (
        select(ChainBlock.number).order_by(ChainBlock.number.desc()).offset(keep - 1).limit(1)
    ).scalar_subquery()
    session.execute(delete(ChainBlock).where(ChainBlock.number < oldest_kept))
