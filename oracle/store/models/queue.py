"""The job queue: inference, embedding, verification and read-back work for the worker pools."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from oracle.store.models.base import Base
from oracle.store.types import Uint256, one_of

JobKind = Literal["inference", "embedding", "verification", "readback"]
JobStatus = Literal["queued", "running", "done", "failed", "dead", "expired"]
JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)


class Job(Base):
    """A unit of work; claimed in ``ORDER BY priority, pay_per_token_wei DESC, deadline, id``
    (lower priority first, then better-paying, then the earliest deadline).

    ``request_id`` deliberately has no foreign key, so benchmarks and maintenance jobs
    can be queued without a request row.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(one_of("kind", JOB_KINDS), name="kind"),
        CheckConstraint(one_of("status", JOB_STATUSES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("max_attempts >= 1", name="max_attempts"),
        CheckConstraint("pay_per_token_wei >= 0", name="pay_per_token_wei"),
        # A running job always has an owner and a lease that can run out.
        CheckConstraint(
            "status <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="running_has_lease",
        ),
        # Serves lease reclaim: running jobs whose lease ran out.
        Index(
            "ix_jobs_running_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_jobs_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(Text)
    request_id: Mapped[int | None] = mapped_column(Uint256)
    model: Mapped[str | None]
    priority: Mapped[int] = mapped_column(SmallInteger)
    deadline: Mapped[datetime]
    status: Mapped[JobStatus] = mapped_column(Text, server_default="queued")
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    result: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    run_after: Mapped[datetime] = mapped_column(server_default=func.now())
    lease_expires_at: Mapped[datetime | None]
    worker_id: Mapped[str | None]
    heartbeat_at: Mapped[datetime | None]
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    pay_per_token_wei: Mapped[float] = mapped_column(
        Double,
        server_default=text("0"),
        comment="what this node earns per token of work (fee per seat / (prompt tokens + "
        "maxTokens)); a worker claims jobs of one model, so this orders by earnings per "
        "second of worker time; 0 for embedding and verification",
    )


# Serves the claim query (oracle.store.queue.CLAIM_SQL): its WHERE and ORDER BY, nothing else.
Index(
    "ix_jobs_queued_claim_order",
    Job.priority,
    Job.pay_per_token_wei.desc(),
    Job.deadline,
    Job.id,
    postgresql_where=text("status = 'queued'"),
)
