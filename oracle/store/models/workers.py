"""Worker processes that announce themselves: which models are loaded, where, since when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Integer, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import one_of

WORKER_ROLES = ("llm", "embedding")


class WorkerRecord(Base):
    """One worker process; ``heartbeat_at`` tells whether it is still alive.

    Workers on other machines (``oracle worker``) appear here too: the database is the
    only thing they share with the node.
    """

    __tablename__ = "workers"
    __table_args__ = (
        CheckConstraint(one_of("role", WORKER_ROLES), name="role"),
        CheckConstraint("slots >= 1", name="slots"),
    )

    worker_id: Mapped[str] = mapped_column(primary_key=True)
    host: Mapped[str]
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(Text)
    model: Mapped[str]
    ready_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())
    stopped_at: Mapped[datetime | None]
    slots: Mapped[int] = mapped_column(
        Integer,
        server_default=text("1"),
        comment="jobs the worker runs at once (a batched LLM worker's sequences)",
    )
