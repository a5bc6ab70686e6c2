"""Protocol v2: requests keep their terms, seats their tickets, and a seat can be lost.

``requests``: the terms ``InferenceRequested`` carries (the request hash commitments
bind, the seed of the seats' tickets, the expiry, the eligible node count that closes
commits early, the slash rate, the callback gas price); NULL for requests stored before
this revision (a v2 node does not serve those). The phase ``evicted``: a better ticket
took this node's seat.

``seats``: one row per committer, keyed by (request, node) instead of (request, seat):
a commit with a better ticket takes the seat of the worst one while commits are open,
and the evicted row stays (``evicted_block_number``) so that a reorg can give the seat
back. One holder per seat number (a partial unique index). Each row's ``ticket``.

``outgoing_txs``: the kind ``expire``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UINT256 = sa.Numeric(78, 0)
UINT256_LIMIT = 2**256
UINT64_MAX = 2**64 - 1

_PHASES_BEFORE = (
    "'requested', 'committing', 'revealing', 'finalizing', 'finalized', 'failed', "
    "'skipped', 'orphaned'"
)
_PHASES_AFTER = (
    "'requested', 'committing', 'revealing', 'finalizing', 'finalized', 'failed', "
    "'skipped', 'evicted', 'orphaned'"
)
_TX_KINDS_BEFORE = "'register', 'commit', 'reveal', 'dispute', 'finalize'"
_TX_KINDS_AFTER = "'register', 'commit', 'reveal', 'dispute', 'finalize', 'expire'"


def upgrade() -> None:
    _request_terms()
    _set_checks(_PHASES_AFTER, _TX_KINDS_AFTER)
    _seats_per_committer()


def downgrade() -> None:
    # Evicted commits held no seat in the old shape; seats lost keep no place there.
    op.execute("DELETE FROM seats WHERE evicted_block_number IS NOT NULL")
    op.drop_index("uq_seats_request_id_seat_no_held", table_name="seats")
    op.drop_constraint(op.f("pk_seats"), "seats", type_="primary")
    op.create_primary_key(op.f("pk_seats"), "seats", ["request_id", "seat_no"])
    op.create_unique_constraint(
        op.f("uq_seats_request_id_oracle"), "seats", ["request_id", "oracle"]
    )
    op.drop_constraint(op.f("ck_seats_evicted_block_number"), "seats", type_="check")
    op.drop_constraint(op.f("ck_seats_ticket"), "seats", type_="check")
    op.drop_column("seats", "evicted_block_number")
    op.drop_column("seats", "ticket")
    op.execute("DELETE FROM outgoing_txs WHERE kind = 'expire'")
    op.execute(
        "UPDATE requests SET phase = 'skipped', skip_reason = 'evicted' WHERE phase = 'evicted'"
    )
    op.execute(
        "UPDATE requests SET phase_before_outcome = 'skipped'"
        " WHERE phase_before_outcome = 'evicted'"
    )
    _set_checks(_PHASES_BEFORE, _TX_KINDS_BEFORE)
    for name in (
        "callback_gas_price",
        "slash_bps",
        "eligible_count",
        "seed",
        "request_hash",
    ):
        op.drop_constraint(op.f(f"ck_requests_{name}"), "requests", type_="check")
    for name in (
        "callback_gas_price",
        "slash_bps",
        "eligible_count",
        "expires_at",
        "seed",
        "request_hash",
    ):
        op.drop_column("requests", name)


def _request_terms() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "request_hash",
            postgresql.BYTEA(),
            nullable=True,
            comment="what commitments bind; NULL for requests stored before 0006",
        ),
    )
    op.add_column("requests", sa.Column("seed", UINT256, nullable=True))
    op.add_column(
        "requests",
        sa.Column(
            "expires_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="after this, finalize reverts and anyone may expire the request",
        ),
    )
    op.add_column(
        "requests",
        sa.Column(
            "eligible_count",
            sa.Integer(),
            nullable=True,
            comment="nodes that could commit: commits close once this many have",
        ),
    )
    op.add_column("requests", sa.Column("slash_bps", sa.Integer(), nullable=True))
    op.add_column("requests", sa.Column("callback_gas_price", UINT256, nullable=True))
    checks = {
        "request_hash": "octet_length(request_hash) = 32",
        "seed": f"seed >= 0 AND seed < {UINT256_LIMIT}",
        "eligible_count": "eligible_count BETWEEN 0 AND 65535",
        "slash_bps": "slash_bps BETWEEN 0 AND 10000",
        "callback_gas_price": f"callback_gas_price BETWEEN 0 AND {UINT64_MAX}",
    }
    for name, expression in checks.items():
        op.create_check_constraint(op.f(f"ck_requests_{name}"), "requests", expression)


def _set_checks(phases: str, tx_kinds: str) -> None:
    for column in ("phase", "phase_before_outcome"):
        op.drop_constraint(op.f(f"ck_requests_{column}"), "requests", type_="check")
        op.create_check_constraint(
            op.f(f"ck_requests_{column}"), "requests", f"{column} IN ({phases})"
        )
    op.drop_constraint(op.f("ck_outgoing_txs_kind"), "outgoing_txs", type_="check")
    op.create_check_constraint(
        op.f("ck_outgoing_txs_kind"), "outgoing_txs", f"kind IN ({tx_kinds})"
    )


def _seats_per_committer() -> None:
    op.add_column(
        "seats",
        sa.Column(
            "ticket",
            UINT256,
            nullable=True,
            comment="stake-weighted ticket, smaller is better; NULL before 0006",
        ),
    )
    op.add_column(
        "seats",
        sa.Column(
            "evicted_block_number",
            sa.BigInteger(),
            nullable=True,
            comment="block of the commit that took this seat; NULL while held",
        ),
    )
    op.create_check_constraint(
        op.f("ck_seats_ticket"), "seats", f"ticket >= 0 AND ticket < {UINT256_LIMIT}"
    )
    op.create_check_constraint(
        op.f("ck_seats_evicted_block_number"),
        "seats",
        "evicted_block_number >= commit_block_number",
    )
    op.drop_constraint(op.f("uq_seats_request_id_oracle"), "seats", type_="unique")
    op.drop_constraint(op.f("pk_seats"), "seats", type_="primary")
    op.create_primary_key(op.f("pk_seats"), "seats", ["request_id", "oracle"])
    op.create_index(
        "uq_seats_request_id_seat_no_held",
        "seats",
        ["request_id", "seat_no"],
        unique=True,
        postgresql_where=sa.text("evicted_block_number IS NULL"),
    )
