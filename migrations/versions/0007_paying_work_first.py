"""Paying work first: jobs carry what they earn per output token, and the claim takes the
better-paying job before the one due sooner.

``jobs.pay_per_token_wei``: fee per seat / maxTokens for an inference (0 for embedding and
verification, and for jobs queued before this revision). The claim index becomes
``(priority, pay_per_token_wei DESC, deadline, id) WHERE status = 'queued'``, the order of
``oracle.store.queue.CLAIM_SQL``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column(
            "pay_per_token_wei",
            sa.Double(),
            server_default=sa.text("0"),
            nullable=False,
            comment="what this node earns per output token (fee per seat / maxTokens); a "
            "worker claims jobs of one model, so this orders by earnings per second of worker "
            "time; 0 for embedding and verification",
        ),
    )
    op.create_check_constraint(op.f("ck_jobs_pay_per_token_wei"), "jobs", "pay_per_token_wei >= 0")
    op.drop_index("ix_jobs_queued_claim_order", table_name="jobs")
    op.create_index(
        "ix_jobs_queued_claim_order",
        "jobs",
        ["priority", sa.text("pay_per_token_wei DESC"), "deadline", "id"],
        postgresql_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_claim_order", table_name="jobs")
    op.create_index(
        "ix_jobs_queued_claim_order",
        "jobs",
        ["priority", "deadline", "id"],
        postgresql_where=QUEUED,
    )
    op.drop_constraint(op.f("ck_jobs_pay_per_token_wei"), "jobs", type_="check")
    op.drop_column("jobs", "pay_per_token_wei")
