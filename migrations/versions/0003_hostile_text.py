"""Reveals keep the hash of their exact bytes and say when those bytes are not text.

A revealed output may hold any bytes (not UTF-8, a NUL); the node stores an escaped form
in ``revealed_output``, the reason in ``reveal_defect``, and in ``output_hash`` the
keccak256 of the bytes as revealed, which ``finalize`` needs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "seats",
        sa.Column(
            "output_hash",
            postgresql.BYTEA(),
            nullable=True,
            comment="keccak256 of the revealed bytes; NULL for reveals stored before 0003",
        ),
    )
    op.add_column(
        "seats",
        sa.Column(
            "reveal_defect",
            sa.Text(),
            nullable=True,
            comment="why the revealed bytes are not usable text; revealed_output is escaped then",
        ),
    )
    op.create_check_constraint(
        op.f("ck_seats_output_hash"), "seats", "octet_length(output_hash) = 32"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_seats_output_hash"), "seats", type_="check")
    op.drop_column("seats", "reveal_defect")
    op.drop_column("seats", "output_hash")
