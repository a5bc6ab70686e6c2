"""What the listener has seen of the chain: checkpoints, block hashes and raw events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import Uint256, byte_length


class ChainCheckpoint(Base):
    """The last block a listener has fully processed."""

    __tablename__ = "chain_checkpoints"
    __table_args__ = (
        CheckConstraint("block_number >= 0", name="block_number"),
        CheckConstraint(byte_length("block_hash", 32), name="block_hash"),
    )

    listener: Mapped[str] = mapped_column(primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[bytes]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class ChainBlock(Base):
    """A recently processed block; parent hashes reveal reorgs."""

    __tablename__ = "chain_blocks"
    __table_args__ = (
        CheckConstraint("number >= 0", name="number"),
        CheckConstraint(byte_length("hash", 32), name="hash"),
        CheckConstraint(byte_length("parent_hash", 32), name="parent_hash"),
    )

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(unique=True)
    parent_hash: Mapped[bytes]
    recorded_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ChainEvent(Base):
    """A decoded contract log; (block_hash, log_index) makes a replayed log a no-op."""

    __tablename__ = "chain_events"
    __table_args__ = (
        UniqueConstraint("block_hash", "log_index"),
        CheckConstraint("block_number >= 0", name="block_number"),
        CheckConstraint("log_index >= 0", name="log_index"),
        CheckConstraint(byte_length("block_hash", 32), name="block_hash"),
        CheckConstraint(byte_length("tx_hash", 32), name="tx_hash"),
        Index("ix_chain_events_block_number_log_index", "block_number", "log_index"),
        Index("ix_chain_events_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[bytes]
    log_index: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[bytes]
    event: Mapped[str]
    request_id: Mapped[int | None] = mapped_column(Uint256)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
