"""Workers say how many jobs they run at once: ``workers.slots``.

A batched LLM worker decodes up to ``--parallel`` jobs together; admission shares the
work ahead of a request among the live workers' slots, not among the workers (1 for
workers announced before this revision, and for every sequential or embedding worker).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workers",
        sa.Column(
            "slots",
            sa.Integer(),
            server_default=sa.text("1"),
            nullable=False,
            comment="jobs the worker runs at once (a batched LLM worker's sequences)",
        ),
    )
    op.create_check_constraint(op.f("ck_workers_slots"), "workers", "slots >= 1")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_workers_slots"), "workers", type_="check")
    op.drop_column("workers", "slots")
