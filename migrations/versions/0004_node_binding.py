"""The database records the one chain and coordinator it belongs to.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_binding",
        sa.Column(
            "singleton",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
            comment="at most one row",
        ),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("coordinator", sa.Text(), nullable=False),
        sa.Column(
            "bound_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("singleton", name=op.f("ck_node_binding_singleton")),
        sa.CheckConstraint("chain_id > 0", name=op.f("ck_node_binding_chain_id")),
        sa.CheckConstraint(
            "coordinator ~ '^0x[0-9a-f]{40}$'", name=op.f("ck_node_binding_coordinator")
        ),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_node_binding")),
    )


def downgrade() -> None:
    op.drop_table("node_binding")
