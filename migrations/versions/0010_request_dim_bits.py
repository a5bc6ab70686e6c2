"""``requests.dim_bits``: the embedding bits every reveal of the request must carry.

The coordinator fixes them when the request is made, from the embedding model's
registration, which its owner may change; a node that committed bits of another length
could never reveal and would be slashed. The ``InferenceRequested`` event now carries
them (``terms.dimBits``) and admission declines a request whose bits differ from what
the node's signal gives. Requests stored before keep NULL (not checked).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMMENT = "embedding bits a reveal carries; NULL for requests stored before 0010"


def upgrade() -> None:
    op.add_column("requests", sa.Column("dim_bits", sa.Integer(), nullable=True, comment=_COMMENT))
    op.create_check_constraint(
        op.f("ck_requests_dim_bits"), "requests", "dim_bits BETWEEN 0 AND 65535"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_requests_dim_bits"), "requests", type_="check")
    op.drop_column("requests", "dim_bits")
