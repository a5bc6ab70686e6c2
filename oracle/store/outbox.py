"""The transaction outbox: a decision becomes a row first, and the sender works the rows.

``enqueue_tx`` is called inside the caller's own transaction, so a decision and what
it depends on (a commit and its salt) are stored together or not at all; a decision
taken twice is recorded once (``(kind, request_id, dedupe_key)`` is unique).

A row moves ``pending -> sent -> confirmed | failed``, or ``pending -> skipped`` when a
simulation shows the work is already done. A reorg can take a mined transaction off the
chain again: its row goes back ``confirmed -> sent`` and is sent again. A row whose
request a reorg orphaned waits while it is orphaned (a sent one the chain lost goes back
to pending first, without its nonce). A ``sent`` row holds everything needed to
sign its transaction again, byte for byte: its nonce, gas and fees are stored before
the transaction is broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased
from sqlalchemy.sql.expression import Exists

from oracle.store.models import OutgoingTx, Request, TxKind
from oracle.store.wakes import wake_requests

__all__ = [
    "defer_tx",
    "enqueue_tx",
    "find_tx",
    "highest_nonce",
    "in_flight_txs",
    "mark_confirmed",
    "mark_failed",
    "mark_refused",
    "mark_replaced",
    "mark_sent",
    "mark_skipped",
    "mark_unmined",
    "nonce_held",
    "note_tx_error",
    "recent_confirmed_txs",
    "release_nonce",
    "request_orphaned",
    "sendable_txs",
]


def enqueue_tx(
    session: Session,
    *,
    kind: TxKind,
    request_id: int | None,
    dedupe_key: str = "",
    from_address: str,
    to_address: str,
    data: bytes,
    value_wei: int = 0,
) -> bool:
    """Record a transaction to send; False when this decision was already recorded.

    The caller commits, together with whatever the transaction depends on.
    """
    statement = (
        insert(OutgoingTx)
        .values(
            kind=kind,
            request_id=request_id,
            dedupe_key=dedupe_key,
            from_address=from_address.lower(),
            to_address=to_address.lower(),
            data=data,
            value_wei=value_wei,
        )
        .on_conflict_do_nothing()
        .returning(OutgoingTx.id)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def find_tx(
    session: Session, *, kind: TxKind, request_id: int | None, dedupe_key: str = ""
) -> OutgoingTx | None:
    """The outbox row of one decision, to see where it stands."""
    return session.scalars(
        select(OutgoingTx).where(
            OutgoingTx.kind == kind,
            OutgoingTx.request_id.is_not_distinct_from(request_id),
            OutgoingTx.dedupe_key == dedupe_key,
        )
    ).one_or_none()


# --- what the sender reads ---------------------------------------------------------------


def sendable_txs(session: Session, from_address: str, now: datetime) -> Sequence[OutgoingTx]:
    """Pending rows ready to go, oldest first.

    A row waits while an older row of the same request is unfinished (pending or sent):
    a request's transactions depend on each other (no reveal before its commit).
    """
    earlier = aliased(OutgoingTx)
    blocked = exists().where(
        earlier.from_address == OutgoingTx.from_address,
        earlier.request_id == OutgoingTx.request_id,
        earlier.id < OutgoingTx.id,
        earlier.status.in_(("pending", "sent")),
    )
    query = (
        select(OutgoingTx)
        .where(
            OutgoingTx.from_address == from_address,
            OutgoingTx.status == "pending",
            or_(OutgoingTx.not_before.is_(None), OutgoingTx.not_before <= now),
            ~blocked,
            ~_orphaned(OutgoingTx.request_id),
        )
        .order_by(OutgoingTx.id)
    )
    return session.scalars(query).all()


def request_orphaned(session: Session, request_id: int | None) -> bool:
    """True when a reorg orphaned the request: its rows wait, sent or not, until the new
    chain announces the very same request again."""
    if request_id is None:
        return False
    return bool(session.scalar(select(_orphaned(request_id))))


def _orphaned(request_id: int | InstrumentedAttribute[int | None]) -> Exists:
    """Whether a reorg orphaned the request ``request_id`` (a value or a column)."""
    return exists().where(Request.id == request_id, Request.phase == "orphaned")


def in_flight_txs(session: Session, from_address: str) -> Sequence[OutgoingTx]:
    """Rows sent and not yet settled, by nonce."""
    query = (
        select(OutgoingTx)
        .where(OutgoingTx.from_address == from_address, OutgoingTx.status == "sent")
        .order_by(OutgoingTx.nonce)
    )
    return session.scalars(query).all()


def recent_confirmed_txs(
    session: Session, from_address: str, since_block: int
) -> Sequence[OutgoingTx]:
    """Rows confirmed in a block at or after ``since_block``: a reorg may still undo them."""
    query = (
        select(OutgoingTx)
        .where(
            OutgoingTx.from_address == from_address,
            OutgoingTx.status == "confirmed",
            OutgoingTx.receipt_block >= since_block,
        )
        .order_by(OutgoingTx.nonce)
    )
    return session.scalars(query).all()


def nonce_held(session: Session, from_address: str, nonce: int) -> bool:
    """True when a sent or confirmed row of ``from_address`` holds ``nonce``."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    OutgoingTx.from_address == from_address,
                    OutgoingTx.nonce == nonce,
                    OutgoingTx.status.in_(("sent", "confirmed")),
                )
            )
        )
    )


def highest_nonce(session: Session, from_address: str) -> int | None:
    """The highest nonce this outbox ever gave a transaction of ``from_address``."""
    return session.scalar(
        select(func.max(OutgoingTx.nonce)).where(OutgoingTx.from_address == from_address)
    )


# --- what the sender writes --------------------------------------------------------------


def mark_sent(
    session: Session,
    tx_id: int,
    *,
    nonce: int,
    tx_hash: bytes,
    gas_limit: int,
    max_fee_per_gas: int,
    max_priority_fee_per_gas: int,
) -> None:
    """A signed transaction, stored before it is broadcast."""
    _update(
        session,
        tx_id,
        "pending",
        status="sent",
        nonce=nonce,
        tx_hash=tx_hash,
        gas_limit=gas_limit,
        max_fee_per_gas=max_fee_per_gas,
        max_priority_fee_per_gas=max_priority_fee_per_gas,
        sent_at=func.now(),
        attempts=OutgoingTx.attempts + 1,
        not_before=None,
        last_error=None,
    )


def mark_replaced(
    session: Session,
    tx_id: int,
    *,
    tx_hash: bytes,
    max_fee_per_gas: int,
    max_priority_fee_per_gas: int,
) -> None:
    """The same nonce at higher fees; the old hash is kept, since it may still be mined."""
    _update(
        session,
        tx_id,
        "sent",
        replaced_tx_hashes=func.array_append(OutgoingTx.replaced_tx_hashes, OutgoingTx.tx_hash),
        tx_hash=tx_hash,
        max_fee_per_gas=max_fee_per_gas,
        max_priority_fee_per_gas=max_priority_fee_per_gas,
        sent_at=func.now(),
        attempts=OutgoingTx.attempts + 1,
    )


def mark_confirmed(session: Session, tx_id: int, *, tx_hash: bytes, receipt_block: int) -> None:
    """Mined and successful; ``tx_hash`` is the version that was mined."""
    _update(
        session,
        tx_id,
        "sent",
        status="confirmed",
        tx_hash=tx_hash,
        receipt_block=receipt_block,
        confirmed_at=func.now(),
        last_error=None,
    )


def mark_unmined(session: Session, tx_id: int, *, reason: str) -> None:
    """Its block left the chain: back to ``sent`` (same nonce, same signed bytes)."""
    _update(
        session,
        tx_id,
        "confirmed",
        status="sent",
        receipt_block=None,
        confirmed_at=None,
        sent_at=func.now(),
        last_error=reason,
    )


def mark_refused(session: Session, tx_id: int, *, reason: str) -> None:
    """The node refused its broadcast for a lasting reason: failed, and its nonce, never
    used on chain, is free again."""
    _update(session, tx_id, "sent", status="failed", nonce=None, last_error=reason)


def mark_failed(
    session: Session,
    tx_id: int,
    *,
    reason: str,
    tx_hash: bytes | None = None,
    receipt_block: int | None = None,
) -> None:
    """Given up on: reverted on chain (with its receipt) or in simulation (never sent)."""
    values: dict[str, object] = {"status": "failed", "last_error": reason}
    if tx_hash is not None:
        values.update(tx_hash=tx_hash, receipt_block=receipt_block, confirmed_at=func.now())
    _update(session, tx_id, None, **values)
    _wake_its_request(session, tx_id)


def _wake_its_request(session: Session, tx_id: int) -> None:
    """A failed transaction is news for its request (a commit refused for a weak ticket:
    the lifecycle records why at once, instead of at the commit deadline)."""
    request_id = session.scalar(select(OutgoingTx.request_id).where(OutgoingTx.id == tx_id))
    wake_requests(session.connection(), [request_id], "tx failed")


def mark_skipped(session: Session, tx_id: int, *, reason: str) -> None:
    """Not sent: the simulation showed the work already done (the reason says by what)."""
    _update(session, tx_id, "pending", status="skipped", last_error=reason, not_before=None)


def defer_tx(session: Session, tx_id: int, *, until: datetime, reason: str) -> None:
    """Still pending, but not before ``until`` (the contract said "not yet")."""
    _update(
        session,
        tx_id,
        "pending",
        not_before=until,
        last_error=reason,
        attempts=OutgoingTx.attempts + 1,
    )


def release_nonce(session: Session, tx_id: int, *, reason: str) -> None:
    """Back to pending without a nonce: another transaction took the one it had."""
    _update(
        session,
        tx_id,
        "sent",
        status="pending",
        nonce=None,
        tx_hash=None,
        replaced_tx_hashes=[],
        sent_at=None,
        last_error=reason,
    )


def note_tx_error(session: Session, tx_id: int, *, reason: str) -> None:
    """Remember the latest trouble (a refused broadcast) without changing the status."""
    _update(session, tx_id, None, last_error=reason)


def _update(session: Session, tx_id: int, expected_status: str | None, **values: object) -> None:
    condition = OutgoingTx.id == tx_id
    if expected_status is not None:
        condition = and_(condition, OutgoingTx.status == expected_status)
    session.execute(
        update(OutgoingTx)
        .where(condition)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
