"""Initial schema: chain tracking, requests, seats, answers, job queue, tx outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UINT256 = sa.Numeric(78, 0)
UINT256_LIMIT = 2**256
UINT32_MAX = 2**32 - 1
ADDRESS = "'^0x[0-9a-f]{40}$'"


def _now() -> sa.TextClause:
    return sa.text("now()")


def _timestamp(name: str, *, nullable: bool = False, now: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=_now() if now else None,
    )


def _check(table: str, name: str, expression: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(expression, name=op.f(f"ck_{table}_{name}"))


def _uint256(column: str) -> str:
    return f"{column} >= 0 AND {column} < {UINT256_LIMIT}"


def _hash32(column: str) -> str:
    return f"octet_length({column}) = 32"


def upgrade() -> None:
    _create_chain_tables()
    _create_request_tables()
    _create_jobs()
    _create_outgoing_txs()


def downgrade() -> None:
    for table in (
        "outgoing_txs",
        "jobs",
        "answers",
        "seats",
        "requests",
        "chain_events",
        "chain_blocks",
        "chain_checkpoints",
    ):
        op.drop_table(table)


def _create_chain_tables() -> None:
    op.create_table(
        "chain_checkpoints",
        sa.Column("listener", sa.Text(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", postgresql.BYTEA(), nullable=False),
        _timestamp("updated_at", now=True),
        sa.PrimaryKeyConstraint("listener", name=op.f("pk_chain_checkpoints")),
        _check("chain_checkpoints", "block_number", "block_number >= 0"),
        _check("chain_checkpoints", "block_hash", _hash32("block_hash")),
    )
    op.create_table(
        "chain_blocks",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", postgresql.BYTEA(), nullable=False),
        sa.Column("parent_hash", postgresql.BYTEA(), nullable=False),
        _timestamp("recorded_at", now=True),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_chain_blocks")),
        sa.UniqueConstraint("hash", name=op.f("uq_chain_blocks_hash")),
        _check("chain_blocks", "number", "number >= 0"),
        _check("chain_blocks", "hash", _hash32("hash")),
        _check("chain_blocks", "parent_hash", _hash32("parent_hash")),
    )
    op.create_table(
        "chain_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", postgresql.BYTEA(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("tx_hash", postgresql.BYTEA(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("request_id", UINT256, nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        _timestamp("created_at", now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_events")),
        sa.UniqueConstraint(
            "block_hash", "log_index", name=op.f("uq_chain_events_block_hash_log_index")
        ),
        _check("chain_events", "block_number", "block_number >= 0"),
        _check("chain_events", "log_index", "log_index >= 0"),
        _check("chain_events", "block_hash", _hash32("block_hash")),
        _check("chain_events", "tx_hash", _hash32("tx_hash")),
    )
    op.create_index(
        "ix_chain_events_block_number_log_index", "chain_events", ["block_number", "log_index"]
    )
    op.create_index("ix_chain_events_request_id", "chain_events", ["request_id"])


def _create_request_tables() -> None:
    _create_requests()
    _create_seats()
    _create_answers()


def _create_requests() -> None:
    open_phases = "phase IN ('requested', 'committing', 'revealing', 'finalizing')"
    op.create_table(
        "requests",
        sa.Column("id", UINT256, autoincrement=False, nullable=False),
        sa.Column("requester", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("accepted_models", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("temperature_milli", sa.Integer(), nullable=False),
        sa.Column("max_tokens", sa.BigInteger(), nullable=False),
        sa.Column("quorum", sa.SmallInteger(), nullable=False),
        sa.Column("max_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("sec_distance_bp", sa.Integer(), nullable=False),
        sa.Column("sec_percentage_bp", sa.Integer(), nullable=False),
        sa.Column("embedding_model", sa.Text(), nullable=False),
        sa.Column("callback", sa.Text(), nullable=True, comment="NULL when no consumer contract"),
        sa.Column("callback_gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("fee_wei", UINT256, nullable=False),
        _timestamp("commit_deadline"),
        _timestamp("reveal_deadline"),
        sa.Column("dispute_window_s", sa.Integer(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.Text(), server_default="requested", nullable=False),
        sa.Column("outcome_reason", sa.Text(), nullable=True),
        sa.Column(
            "outcome_block_number",
            sa.BigInteger(),
            nullable=True,
            comment="block of InferenceFinalized/InferenceFailed; a reorg past it reopens",
        ),
        sa.Column(
            "phase_before_outcome",
            sa.Text(),
            nullable=True,
            comment="the phase an outcome or orphaning replaced; a reorg or re-mining restores it",
        ),
        sa.Column("skip_reason", sa.Text(), nullable=True, comment="why this node stayed out"),
        _timestamp("created_at", now=True),
        _timestamp("updated_at", now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        _check("requests", "id", _uint256("id")),
        _check("requests", "requester", f"requester ~ {ADDRESS}"),
        _check("requests", "accepted_models", "cardinality(accepted_models) >= 1"),
        _check("requests", "temperature_milli", "temperature_milli BETWEEN 0 AND 65535"),
        _check("requests", "max_tokens", f"max_tokens BETWEEN 0 AND {UINT32_MAX}"),
        _check("requests", "quorum", "quorum BETWEEN 1 AND 255"),
        _check("requests", "max_time_ms", f"max_time_ms BETWEEN 0 AND {UINT32_MAX}"),
        _check("requests", "sec_distance_bp", "sec_distance_bp BETWEEN 0 AND 10000"),
        _check("requests", "sec_percentage_bp", "sec_percentage_bp BETWEEN 0 AND 10000"),
        _check("requests", "callback", f"callback ~ {ADDRESS}"),
        _check("requests", "callback_gas_limit", f"callback_gas_limit BETWEEN 0 AND {UINT32_MAX}"),
        _check("requests", "fee_wei", _uint256("fee_wei")),
        _check("requests", "deadlines", "reveal_deadline >= commit_deadline"),
        _check("requests", "dispute_window_s", "dispute_window_s >= 0"),
        _check("requests", "block_number", "block_number >= 0"),
        _check(
            "requests",
            "phase",
            "phase IN ('requested', 'committing', 'revealing', 'finalizing',"
            " 'finalized', 'failed', 'skipped', 'orphaned')",
        ),
        _check("requests", "outcome_block_number", "outcome_block_number >= 0"),
        _check(
            "requests",
            "phase_before_outcome",
            "phase_before_outcome IN ('requested', 'committing', 'revealing', 'finalizing',"
            " 'finalized', 'failed', 'skipped', 'orphaned')",
        ),
    )
    op.create_index("ix_requests_block_number", "requests", ["block_number"])
    op.create_index(
        "ix_requests_open_commit_deadline",
        "requests",
        ["commit_deadline"],
        postgresql_where=sa.text(open_phases),
    )


def _create_seats() -> None:
    op.create_table(
        "seats",
        sa.Column("request_id", UINT256, nullable=False),
        sa.Column("seat_no", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("oracle", sa.Text(), nullable=False),
        sa.Column("commitment", postgresql.BYTEA(), nullable=False),
        sa.Column("commit_block_number", sa.BigInteger(), nullable=False),
        sa.Column("revealed_output", sa.Text(), nullable=True),
        sa.Column("model_index", sa.SmallInteger(), nullable=True),
        sa.Column("embedding_bits", postgresql.BYTEA(), nullable=True),
        sa.Column("reveal_block_number", sa.BigInteger(), nullable=True),
        sa.Column("excluded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_seats_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", "seat_no", name=op.f("pk_seats")),
        sa.UniqueConstraint("request_id", "oracle", name=op.f("uq_seats_request_id_oracle")),
        _check("seats", "seat_no", "seat_no >= 0"),
        _check("seats", "oracle", f"oracle ~ {ADDRESS}"),
        _check("seats", "commitment", _hash32("commitment")),
        _check("seats", "model_index", "model_index >= 0"),
        _check("seats", "commit_block_number", "commit_block_number >= 0"),
        _check(
            "seats",
            "reveal_complete",
            "(revealed_output IS NULL) = (model_index IS NULL)"
            " AND (revealed_output IS NULL) = (embedding_bits IS NULL)"
            " AND (revealed_output IS NULL) = (reveal_block_number IS NULL)",
        ),
    )


def _create_answers() -> None:
    op.create_table(
        "answers",
        sa.Column("request_id", UINT256, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("model_index", sa.SmallInteger(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("embedding_bits", postgresql.BYTEA(), nullable=False),
        sa.Column("salt", postgresql.BYTEA(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("commitment", postgresql.BYTEA(), nullable=False),
        _timestamp("created_at", now=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_answers_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_answers")),
        _check("answers", "model_index", "model_index >= 0"),
        _check("answers", "salt", "octet_length(salt) = 32"),
        _check("answers", "commitment", _hash32("commitment")),
    )


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("request_id", UINT256, nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        _timestamp("deadline"),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column(
            "payload", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False),
        _timestamp("run_after", now=True),
        _timestamp("lease_expires_at", nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("created_at", now=True),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        _check("jobs", "kind", "kind IN ('inference', 'embedding', 'verification')"),
        _check(
            "jobs",
            "status",
            "status IN ('queued', 'running', 'done', 'failed', 'dead', 'expired')",
        ),
        _check("jobs", "attempts", "attempts >= 0"),
        _check("jobs", "max_attempts", "max_attempts >= 1"),
        _check(
            "jobs",
            "running_has_lease",
            "status <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)",
        ),
    )
    # The claim query's index: WHERE status = 'queued' ORDER BY priority, deadline, id.
    op.create_index(
        "ix_jobs_queued_claim_order",
        "jobs",
        ["priority", "deadline", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_jobs_running_lease_expires_at",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index("ix_jobs_request_id", "jobs", ["request_id"])


def _create_outgoing_txs() -> None:
    op.create_table(
        "outgoing_txs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("request_id", UINT256, nullable=True),
        sa.Column("dedupe_key", sa.Text(), server_default="", nullable=False),
        sa.Column("from_address", sa.Text(), nullable=False),
        sa.Column("to_address", sa.Text(), nullable=False),
        sa.Column("data", postgresql.BYTEA(), nullable=False),
        sa.Column("value_wei", UINT256, server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("tx_hash", postgresql.BYTEA(), nullable=True),
        sa.Column("gas_limit", sa.BigInteger(), nullable=True),
        sa.Column("max_fee_per_gas", UINT256, nullable=True),
        sa.Column("max_priority_fee_per_gas", UINT256, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("created_at", now=True),
        _timestamp("sent_at", nullable=True),
        _timestamp("confirmed_at", nullable=True),
        sa.Column("receipt_block", sa.BigInteger(), nullable=True),
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="a pending tx whose simulation said 'not yet' waits until then",
        ),
        sa.Column(
            "replaced_tx_hashes",
            postgresql.ARRAY(postgresql.BYTEA()),
            server_default=sa.text("'{}'"),
            nullable=False,
            comment="hashes of earlier fee levels of this nonce; any of them may still be mined",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_txs")),
        sa.UniqueConstraint(
            "kind",
            "request_id",
            "dedupe_key",
            name=op.f("uq_outgoing_txs_kind_request_id_dedupe_key"),
        ),
        _check(
            "outgoing_txs",
            "kind",
            "kind IN ('register', 'commit', 'reveal', 'dispute', 'finalize')",
        ),
        _check(
            "outgoing_txs",
            "status",
            "status IN ('pending', 'sent', 'confirmed', 'failed', 'skipped')",
        ),
        _check("outgoing_txs", "request_id", _uint256("request_id")),
        _check("outgoing_txs", "from_address", f"from_address ~ {ADDRESS}"),
        _check("outgoing_txs", "to_address", f"to_address ~ {ADDRESS}"),
        _check("outgoing_txs", "value_wei", _uint256("value_wei")),
        _check("outgoing_txs", "nonce", "nonce >= 0"),
        _check("outgoing_txs", "tx_hash", _hash32("tx_hash")),
        _check("outgoing_txs", "attempts", "attempts >= 0"),
        _check(
            "outgoing_txs",
            "sent_has_nonce",
            "status NOT IN ('sent', 'confirmed') OR (nonce IS NOT NULL AND tx_hash IS NOT NULL)",
        ),
    )
    op.create_index(
        "uq_outgoing_txs_kind_dedupe_key_without_request",
        "outgoing_txs",
        ["kind", "dedupe_key"],
        unique=True,
        postgresql_where=sa.text("request_id IS NULL"),
    )
    op.create_index(
        "ix_outgoing_txs_open_from_address_id",
        "outgoing_txs",
        ["from_address", "id"],
        postgresql_where=sa.text("status IN ('pending', 'sent')"),
    )
    op.create_index("ix_outgoing_txs_tx_hash", "outgoing_txs", ["tx_hash"])
