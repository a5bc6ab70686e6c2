"""The lifecycle wakes the requests that news or a passed deadline concerns, not all open ones.

``requests.next_check_at``: when the clock alone may next change a request's state for
this node (NULL: only news can), with a partial index for the lifecycle's scan. Existing
rows get now(): the first pass after the upgrade looks at each once and sets its own.
``request_wakes``: news for a request (a chain event stored, one of its jobs ended),
written in the transaction that brings it, deleted by the lifecycle's next look.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UINT256 = sa.Numeric(78, 0)


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column(
            "next_check_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=True,
            comment="when the clock alone may next change this request's state for this node; "
            "NULL: only news can (a chain event, one of its jobs ending: request_wakes)",
        ),
    )
    op.create_index(
        op.f("ix_requests_next_check_at"),
        "requests",
        ["next_check_at"],
        postgresql_where=sa.text("next_check_at IS NOT NULL"),
    )
    op.create_table(
        "request_wakes",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", UINT256, nullable=False),
        sa.Column(
            "reason",
            sa.Text(),
            nullable=False,
            comment="what happened: a chain event's name, or 'job'",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_wakes")),
    )
    op.create_index(op.f("ix_request_wakes_request_id"), "request_wakes", ["request_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_request_wakes_request_id"), table_name="request_wakes")
    op.drop_table("request_wakes")
    op.drop_index(op.f("ix_requests_next_check_at"), table_name="requests")
    op.drop_column("requests", "next_check_at")
