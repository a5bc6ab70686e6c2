"""What a transition is given (a ``Step``) and what it answers (a ``Verdict``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from oracle.lifecycle.context import Calldata, NodeContext
from oracle.store.models import Request, RequestPhase


@dataclass(frozen=True, slots=True)
class DeadlineQuestion:
    """What to ask the coordinator for a request's dispute close time, and a key for it."""

    request_id: int
    reveals: tuple[tuple[int, int | None], ...]
    """(seat, reveal block) of every seat the answer is read for. Every seat has revealed
    (a reveal needs closed commits, so the seats are final): the answer holds for these
    reveals, and is remembered for them."""

    @property
    def as_of(self) -> Hashable:
        """``CoordinatorBinding.dispute_deadline``'s ``as_of``: what makes it remember."""
        return self.reveals


@dataclass(frozen=True, slots=True)
class ChainReads:
    """What the chain answered before the request's row was locked, by what was asked.

    A transition never calls the chain itself: the driver reads what the request needs
    first, then locks the row. Should the seats have changed in between, the answer is
    missing under the new key and the transition waits for the next look.
    """

    dispute_deadlines: Mapping[DeadlineQuestion, datetime] = field(default_factory=dict)


NO_READS = ChainReads()


@dataclass(frozen=True, slots=True)
class Step:
    """The arguments every transition shares; the caller holds the request's row lock."""

    session: Session
    request: Request
    ctx: NodeContext
    chain: Calldata
    now: datetime
    reads: ChainReads = NO_READS

    @property
    def log(self) -> dict[str, Any]:
        return {"request_id": self.request.id}


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing (more) to do now. ``until``: when the clock alone may change that; None
    when only news can (a chain event stored for the request, one of its jobs ending)."""

    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """The request goes to ``to``; ``reason`` is recorded when this node stays out."""

    to: RequestPhase
    reason: str | None = None


Verdict = Wait | Move
