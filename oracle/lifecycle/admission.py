"""Admission: can this node serve a request, and finish before its commit deadline?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from oracle.lifecycle.context import ModelProfile, NodeContext


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoad:
    """The measured speed of a model here and the work already waiting for it."""

    tokens_per_s: float | None
    queued_tokens: int
    """max_tokens of this model's queued and running inferences: the work ahead."""
    jobs: int = 0
    """Queued and running inferences of this model."""
    workers: int | None = None
    """Live workers holding the model (autoscaled, or on other machines); None: unknown."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Admit:
    model: str
    model_index: int
    job_deadline: datetime
    """When the inference must be done so that embedding and commit still fit."""
    estimate_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    reason: str


def admit(
    *,
    accepted_models: Sequence[str],
    embedding_model: str,
    max_tokens: int,
    commit_deadline: datetime,
    now: datetime,
    ctx: NodeContext,
    loads: Mapping[str, ModelLoad],
) -> Admit | Refuse:
    """Pick a served model that can finish in time, or say plainly why none can.

    Among those that can: one with a free worker first, then the soonest finish (the
    faster model, when both are free), then the lighter queue, then the requester's order.
    """
    if embedding_model not in ctx.embedding_models:
        return Refuse(reason=f"embedding model {embedding_model!r} is not served here")
    served = [(i, ctx.models[m]) for i, m in enumerate(accepted_models) if m in ctx.models]
    if not served:
        return Refuse(
            reason=f"none of the accepted models {list(accepted_models)} is served here "
            f"(serving {sorted(ctx.models)})"
        )
    fitting = [(i, p) for i, p in served if max_tokens < p.context_tokens]
    if not fitting:
        biggest = max(p.context_tokens for _, p in served)
        return Refuse(
            reason=f"maxTokens {max_tokens} exceeds the served models' context ({biggest} tokens)"
        )
    finish_by = commit_deadline - timedelta(seconds=ctx.commit_margin_s + ctx.embed_estimate_s)
    available_s = (finish_by - now).total_seconds()
    options = [_Option.of(i, p, max_tokens, loads.get(p.name)) for i, p in fitting]
    feasible = sorted((o for o in options if o.estimate_s <= available_s), key=_Option.rank)
    if not feasible:
        fastest = min(o.estimate_s for o in options)
        return Refuse(
            reason=f"cannot finish before the commit deadline: needs about {fastest:.1f} s "
            f"of inference, {max(available_s, 0):.1f} s left after embedding and commit"
        )
    best = feasible[0]
    return Admit(
        model=best.profile.name,
        model_index=best.index,
        job_deadline=finish_by,
        estimate_s=best.estimate_s,
    )


@dataclass(frozen=True, slots=True)
class _Option:
    index: int
    profile: ModelProfile
    estimate_s: float
    free: bool
    queued_tokens: int

    @classmethod
    def of(
        cls, index: int, profile: ModelProfile, max_tokens: int, load: ModelLoad | None
    ) -> _Option:
        jobs = load.jobs if load else 0
        queued = load.queued_tokens if load else 0
        workers = load.workers if load and load.workers is not None else profile.workers
        speed = (load.tokens_per_s if load else None) or profile.prior_tokens_per_s
        # until the answer is ready: the queue ahead, shared by the workers, then its tokens
        estimate_s = (queued / max(workers, 1) + max_tokens) / speed
        return cls(index, profile, estimate_s, jobs < workers, queued)

    def rank(self) -> tuple[bool, float, int, int]:
        return (not self.free, self.estimate_s, self.queued_tokens, self.index)
