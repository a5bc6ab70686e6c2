"""Inference requests as the chain describes them, their seats and this node's answers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import Uint256, address, between, byte_length, one_of, uint256

RequestPhase = Literal[
    "requested",
    "committing",
    "revealing",
    "finalizing",
    "finalized",
    "failed",
    "skipped",
    # A better ticket took this node's seat before commits closed: it does nothing more.
    "evicted",
    # The block that announced the request was reorged away while this node held an
    # answer (and its salt) for it: kept, but no longer followed (oracle.store.chain_state).
    "orphaned",
]
REQUEST_PHASES: tuple[RequestPhase, ...] = get_args(RequestPhase)
OPEN_REQUEST_PHASES: tuple[RequestPhase, ...] = (
    "requested",
    "committing",
    "revealing",
    "finalizing",
)

_UINT16_MAX = 2**16 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_BASIS_POINTS = 10_000


class Request(Base):
    """One ``InferenceRequested`` and where it stands for this node.

    Numeric fields keep their on-chain units (thousandths, basis points, ms, wei);
    the contract validates meaning, the checks here only the on-chain type ranges.
    """

    __tablename__ = "requests"
    __table_args__ = (
        CheckConstraint(uint256("id"), name="id"),
        CheckConstraint(address("requester"), name="requester"),
        CheckConstraint("cardinality(accepted_models) >= 1", name="accepted_models"),
        CheckConstraint(between("temperature_milli", 0, _UINT16_MAX), name="temperature_milli"),
        CheckConstraint(between("max_tokens", 0, _UINT32_MAX), name="max_tokens"),
        CheckConstraint(between("quorum", 1, 255), name="quorum"),
        CheckConstraint(between("max_time_ms", 0, _UINT32_MAX), name="max_time_ms"),
        CheckConstraint(between("sec_distance_bp", 0, _BASIS_POINTS), name="sec_distance_bp"),
        CheckConstraint(between("sec_percentage_bp", 0, _BASIS_POINTS), name="sec_percentage_bp"),
        CheckConstraint(address("callback"), name="callback"),
        CheckConstraint(between("callback_gas_limit", 0, _UINT32_MAX), name="callback_gas_limit"),
        CheckConstraint(uint256("fee_wei"), name="fee_wei"),
        CheckConstraint("reveal_deadline >= commit_deadline", name="deadlines"),
        CheckConstraint("dispute_window_s >= 0", name="dispute_window_s"),
        CheckConstraint(byte_length("request_hash", 32), name="request_hash"),
        CheckConstraint(uint256("seed"), name="seed"),
        CheckConstraint(between("eligible_count", 0, _UINT16_MAX), name="eligible_count"),
        CheckConstraint(between("slash_bps", 0, _BASIS_POINTS), name="slash_bps"),
        CheckConstraint(between("dim_bits", 0, _UINT16_MAX), name="dim_bits"),
        CheckConstraint(between("callback_gas_price", 0, _UINT64_MAX), name="callback_gas_price"),
        CheckConstraint("block_number >= 0", name="block_number"),
        CheckConstraint(one_of("phase", REQUEST_PHASES), name="phase"),
        CheckConstraint("outcome_block_number >= 0", name="outcome_block_number"),
        CheckConstraint(
            one_of("phase_before_outcome", REQUEST_PHASES), name="phase_before_outcome"
        ),
        Index("ix_requests_block_number", "block_number"),
        Index(
            "ix_requests_open_commit_deadline",
            "commit_deadline",
            postgresql_where=text(one_of("phase", OPEN_REQUEST_PHASES)),
        ),
        # The lifecycle's scan for requests whose next check has come (oracle.lifecycle.driver).
        Index(
            "ix_requests_next_check_at",
            "next_check_at",
            postgresql_where=text("next_check_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Uint256, primary_key=True, autoincrement=False)
    requester: Mapped[str]
    prompt: Mapped[str]
    accepted_models: Mapped[list[str]] = mapped_column(ARRAY(Text))
    temperature_milli: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(BigInteger)
    quorum: Mapped[int] = mapped_column(SmallInteger)
    max_time_ms: Mapped[int] = mapped_column(BigInteger)
    sec_distance_bp: Mapped[int] = mapped_column(Integer)
    sec_percentage_bp: Mapped[int] = mapped_column(Integer)
    embedding_model: Mapped[str]
    callback: Mapped[str | None] = mapped_column(comment="NULL when no consumer contract")
    callback_gas_limit: Mapped[int] = mapped_column(BigInteger)
    fee_wei: Mapped[int] = mapped_column(Uint256)
    commit_deadline: Mapped[datetime]
    reveal_deadline: Mapped[datetime]
    dispute_window_s: Mapped[int] = mapped_column(Integer)
    block_number: Mapped[int] = mapped_column(BigInteger)
    phase: Mapped[RequestPhase] = mapped_column(Text, server_default="requested")
    outcome_reason: Mapped[str | None]
    outcome_block_number: Mapped[int | None] = mapped_column(
        BigInteger, comment="block of InferenceFinalized/InferenceFailed; a reorg past it reopens"
    )
    phase_before_outcome: Mapped[RequestPhase | None] = mapped_column(
        Text,
        comment="the phase an outcome or orphaning replaced; a reorg or re-mining restores it",
    )
    skip_reason: Mapped[str | None] = mapped_column(comment="why this node stayed out")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    next_check_at: Mapped[datetime | None] = mapped_column(
        server_default=func.now(),
        comment="when the clock alone may next change this request's state for this node; "
        "NULL: only news can (a chain event, one of its jobs ending: request_wakes)",
    )
    # Protocol v2 terms (InferenceRequested.terms); NULL for requests stored before 0006,
    # which a v2 node does not serve.
    request_hash: Mapped[bytes | None] = mapped_column(
        comment="what commitments bind; NULL for requests stored before 0006"
    )
    seed: Mapped[int | None] = mapped_column(Uint256)
    expires_at: Mapped[datetime | None] = mapped_column(
        comment="after this, finalize reverts and anyone may expire the request"
    )
    eligible_count: Mapped[int | None] = mapped_column(
        Integer, comment="nodes that could commit: commits close once this many have"
    )
    slash_bps: Mapped[int | None] = mapped_column(Integer)
    callback_gas_price: Mapped[int | None] = mapped_column(Uint256)
    dim_bits: Mapped[int | None] = mapped_column(
        Integer, comment="embedding bits a reveal carries; NULL for requests stored before 0010"
    )


class Seat(Base):
    """One node's commit to a request: its seat, ticket, commitment and, once revealed,
    its answer.

    A commit with a better ticket may take a seat while commits are open: the evicted
    row stays (``evicted_block_number`` set), so that a reorg can give the seat back.
    The seats of a request are its rows not evicted; their count of rows, evicted ones
    included, is the contract's ``commitCount``.
    """

    __tablename__ = "seats"
    __table_args__ = (
        # one holder per seat; evicted commits keep the number they held
        Index(
            "uq_seats_request_id_seat_no_held",
            "request_id",
            "seat_no",
            unique=True,
            postgresql_where=text("evicted_block_number IS NULL"),
        ),
        CheckConstraint("seat_no >= 0", name="seat_no"),
        CheckConstraint(address("oracle"), name="oracle"),
        CheckConstraint(byte_length("commitment", 32), name="commitment"),
        CheckConstraint("model_index >= 0", name="model_index"),
        CheckConstraint("commit_block_number >= 0", name="commit_block_number"),
        CheckConstraint(uint256("ticket"), name="ticket"),
        CheckConstraint("evicted_block_number >= commit_block_number", name="evicted_block_number"),
        # A reveal arrives whole: output, model and bits together, or none of them.
        CheckConstraint(
            "(revealed_output IS NULL) = (model_index IS NULL)"
            " AND (revealed_output IS NULL) = (embedding_bits IS NULL)"
            " AND (revealed_output IS NULL) = (reveal_block_number IS NULL)",
            name="reveal_complete",
        ),
        CheckConstraint(byte_length("output_hash", 32), name="output_hash"),
    )

    request_id: Mapped[int] = mapped_column(
        Uint256, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    seat_no: Mapped[int] = mapped_column(SmallInteger)
    oracle: Mapped[str] = mapped_column(primary_key=True)
    commitment: Mapped[bytes]
    commit_block_number: Mapped[int] = mapped_column(BigInteger)
    revealed_output: Mapped[str | None]
    model_index: Mapped[int | None] = mapped_column(SmallInteger)
    embedding_bits: Mapped[bytes | None]
    reveal_block_number: Mapped[int | None] = mapped_column(BigInteger)
    excluded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    output_hash: Mapped[bytes | None] = mapped_column(
        comment="keccak256 of the revealed bytes; NULL for reveals stored before 0003"
    )
    reveal_defect: Mapped[str | None] = mapped_column(
        comment="why the revealed bytes are not usable text; revealed_output is escaped then"
    )
    ticket: Mapped[int | None] = mapped_column(
        Uint256, comment="stake-weighted ticket, smaller is better; NULL before 0006"
    )
    evicted_block_number: Mapped[int | None] = mapped_column(
        BigInteger, comment="block of the commit that took this seat; NULL while held"
    )


class RequestWake(Base):
    """News for a request: a chain event stored for it, or one of its jobs ended.

    Written in the transaction that brings the news (no lock on the request's row), and
    deleted by the lifecycle's next look at the request, under its row lock: a pass wakes
    exactly the requests that news or a passed deadline concerns.
    """

    __tablename__ = "request_wakes"
    __table_args__ = (Index("ix_request_wakes_request_id", "request_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    request_id: Mapped[int] = mapped_column(Uint256)
    reason: Mapped[str] = mapped_column(comment="what happened: a chain event's name, or 'job'")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Answer(Base):
    """This node's own answer; stored, salt included, before the commit is sent."""

    __tablename__ = "answers"
    __table_args__ = (
        CheckConstraint("model_index >= 0", name="model_index"),
        CheckConstraint(byte_length("salt", 32), name="salt"),
        CheckConstraint(byte_length("commitment", 32), name="commitment"),
    )

    request_id: Mapped[int] = mapped_column(
        Uint256, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str]
    model_index: Mapped[int] = mapped_column(SmallInteger)
    output: Mapped[str]
    embedding_bits: Mapped[bytes]
    salt: Mapped[bytes]
    seed: Mapped[int] = mapped_column(BigInteger)
    commitment: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
