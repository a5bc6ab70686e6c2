"""The transaction outbox: every transaction the node decides to send, before it is sent."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import Uint256, address, byte_length, one_of, uint256

TxKind = Literal["register", "commit", "reveal", "dispute", "finalize", "expire"]
TxStatus = Literal["pending", "sent", "confirmed", "failed", "skipped"]
"""``skipped``: simulation showed the work already done (e.g. AlreadyCommitted); not sent."""
TX_KINDS: tuple[TxKind, ...] = get_args(TxKind)
TX_STATUSES: tuple[TxStatus, ...] = get_args(TxStatus)


class OutgoingTx(Base):
    """One decided transaction; ``(kind, request_id, dedupe_key)`` records a decision once.

    ``dedupe_key`` tells apart decisions of one kind on one request (a dispute names
    the accused address); it is ``''`` when the kind and request say it all.
    """

    __tablename__ = "outgoing_txs"
    __table_args__ = (
        UniqueConstraint("kind", "request_id", "dedupe_key"),
        CheckConstraint(one_of("kind", TX_KINDS), name="kind"),
        CheckConstraint(one_of("status", TX_STATUSES), name="status"),
        CheckConstraint(uint256("request_id"), name="request_id"),
        CheckConstraint(address("from_address"), name="from_address"),
        CheckConstraint(address("to_address"), name="to_address"),
        CheckConstraint(uint256("value_wei"), name="value_wei"),
        CheckConstraint("nonce >= 0", name="nonce"),
        CheckConstraint(byte_length("tx_hash", 32), name="tx_hash"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint(
            "status NOT IN ('sent', 'confirmed') OR (nonce IS NOT NULL AND tx_hash IS NOT NULL)",
            name="sent_has_nonce",
        ),
        # NULLs are distinct in the unique constraint above; this covers request-less kinds.
        Index(
            "uq_outgoing_txs_kind_dedupe_key_without_request",
            "kind",
            "dedupe_key",
            unique=True,
            postgresql_where=text("request_id IS NULL"),
        ),
        # The sender's work list: its pending and in-flight transactions, oldest first.
        Index(
            "ix_outgoing_txs_open_from_address_id",
            "from_address",
            "id",
            postgresql_where=text("status IN ('pending', 'sent')"),
        ),
        Index("ix_outgoing_txs_tx_hash", "tx_hash"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[TxKind] = mapped_column(Text)
    request_id: Mapped[int | None] = mapped_column(Uint256)
    dedupe_key: Mapped[str] = mapped_column(server_default="")
    from_address: Mapped[str]
    to_address: Mapped[str]
    data: Mapped[bytes]
    value_wei: Mapped[int] = mapped_column(Uint256, server_default=text("0"))
    status: Mapped[TxStatus] = mapped_column(Text, server_default="pending")
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[bytes | None]
    gas_limit: Mapped[int | None] = mapped_column(BigInteger)
    max_fee_per_gas: Mapped[int | None] = mapped_column(Uint256)
    max_priority_fee_per_gas: Mapped[int | None] = mapped_column(Uint256)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sent_at: Mapped[datetime | None]
    confirmed_at: Mapped[datetime | None]
    receipt_block: Mapped[int | None] = mapped_column(BigInteger)
    not_before: Mapped[datetime | None] = mapped_column(
        comment="a pending tx whose simulation said 'not yet' waits until then"
    )
    replaced_tx_hashes: Mapped[list[bytes]] = mapped_column(
        ARRAY(BYTEA),
        server_default=text("'{}'"),
        comment="hashes of earlier fee levels of this nonce; any of them may still be mined",
    )
