"""``jobs.kind`` may be ``readback``: an LLM worker reads another node's revealed answer
back through the named model, with the request's seed, and says how far its own logits
lay from writing it (``oracle.engine.worker.AnswerReader``). A node disputes a reveal that
no way of writing it comes within the read-back margin of.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "kind IN ('inference', 'embedding', 'verification')"
_AFTER = "kind IN ('inference', 'embedding', 'verification', 'readback')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_kind"), "jobs", _AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'readback'")
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_kind"), "jobs", _BEFORE)
