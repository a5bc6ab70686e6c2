"""Which chain and contract a node's database belongs to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import address


class NodeBinding(Base):
    """The one chain id and coordinator this database serves, written on the first start.

    A database that followed one contract holds request ids, salts and nonces that mean
    nothing on another: every start compares what it is asked to follow with this row.
    """

    __tablename__ = "node_binding"
    __table_args__ = (
        CheckConstraint("singleton", name="singleton"),
        CheckConstraint("chain_id > 0", name="chain_id"),
        CheckConstraint(address("coordinator"), name="coordinator"),
    )

    singleton: Mapped[bool] = mapped_column(
        Boolean, primary_key=True, server_default=text("true"), comment="at most one row"
    )
    chain_id: Mapped[int] = mapped_column(BigInteger)
    coordinator: Mapped[str]
    bound_at: Mapped[datetime] = mapped_column(server_default=func.now())
