"""``jobs.pay_per_token_wei`` is per token of work: the prompt's tokens and maxTokens.

An inference's claim key was the fee per seat over maxTokens; a context-filling prompt
with maxTokens 1 then outranked requests paying far more. It is now the fee per seat over
the job's work (``work_tokens`` in its payload: the prompt's estimated tokens plus
maxTokens). Only the column's comment changes; jobs queued before keep their key.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = (
    "what this node earns per output token (fee per seat / maxTokens); a worker claims "
    "jobs of one model, so this orders by earnings per second of worker time; 0 for "
    "embedding and verification"
)
_AFTER = (
    "what this node earns per token of work (fee per seat / (prompt tokens + maxTokens)); "
    "a worker claims jobs of one model, so this orders by earnings per second of worker "
    "time; 0 for embedding and verification"
)


def upgrade() -> None:
    op.alter_column(
        "jobs", "pay_per_token_wei", existing_type=sa.Double(), comment=_AFTER,
        existing_comment=_BEFORE, existing_nullable=False,
    )  # fmt: skip


def downgrade() -> None:
    op.alter_column(
        "jobs", "pay_per_token_wei", existing_type=sa.Double(), comment=_BEFORE,
        existing_comment=_AFTER, existing_nullable=False,
    )  # fmt: skip
