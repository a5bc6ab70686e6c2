"""Admission: does a request pay what this node asks, and can it finish before its commit
deadline behind the better-paying work already queued?

The questions, in order; the first "no" declines the request with a reason the operator
reads in ``oracle status``:

0. Are its terms ones the node commits under: a commit deadline within
   ``--max-commit-window-s``, and the reveal window, dispute window, slash rate and
   expiry grace the coordinator fixed for it within what the operator accepts
   (``AcceptedTerms``)?
1. Can the node serve it at all: its embedding model, the bits a reveal must carry (the
   coordinator fixed them from the model's registration) being those the node's signal
   gives, one of its accepted models, a context that holds its prompt and its maxTokens
   (the context one job gets: a batched worker's slot; a worker refuses a job that does
   not fit, after it took queue room)?
2. Does it pay: what each cluster member earns (fee / quorum, what the coordinator pays
   each seat of the winning cluster) must reach the operator's price per token of work
   times the request's work (its prompt's tokens and its maxTokens), for at least one of
   those models.
3. Can it finish in time: the work that runs before it (every running inference, and the
   queued ones the claim order puts first: those paying more per token of work, or as
   much and due no later; ``oracle.store.queue``), shared by the model's workers, then
   its own work, all at the model's measured speed, must end before the commit deadline
   less the embedding and the commit. Cheaper work queued earlier does not count: the
   claim order runs the new request before it, so a flood of cheap requests delays
   nobody who pays more. Workers that decode many jobs together (batched: more slots
   than workers) are measured two ways: a worker's throughput, all its jobs together,
   drains the work ahead, and only for the part of it that must end before a slot frees
   (none while a slot is free); a job's own speed, which is lower when it shares the
   worker, times its own work.

A job's work is the tokens the model reads and writes: its maxTokens plus its prompt's
tokens (``Offer.work_tokens``), each counted once. Reading a prompt is not free: a
request with a context-filling prompt and maxTokens 1 holds a worker for as long as one
that writes as many tokens, so it must pay the price of both to be admitted, per token of
both to be claimed first, and it delays the work behind it by both. The speed it is
measured at counts the same tokens (``oracle.store.queue_stats``). A prompt token weighs
as much as a generated one: on a CPU reading a prompt runs at about the speed of writing
(SmolLM2 on two cores: 3,703 prompt tokens in 83 s), on a GPU much faster, so the weight
errs towards declining. The prompt's tokens are not counted here (the node loads no
tokenizer): they are estimated from its bytes by ``prompt_tokens_estimate``.

Pure: the caller reads the loads (``oracle.store.queue_stats.inference_loads``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from oracle.consensus.signal import SIGNALS, embedding_job
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.store.queue_stats import ModelLoad

__all__ = [
    "Admit",
    "ModelLoad",
    "Offer",
    "Refuse",
    "Terms",
    "admit",
    "format_wei",
    "inference_deadline",
    "prompt_tokens_estimate",
]

BYTES_PER_TOKEN = 3
"""What ``prompt_tokens_estimate`` divides a prompt's bytes by (see there)."""
TEMPLATE_TOKENS = 32
"""Tokens a model reads around the prompt: SmolLM2's chat template (its default system
message and role markers) adds 30, a completion model's BOS one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """What a request pays one seat, and for how much work."""

    fee_wei: int
    """The fee shared by the seats (the callback's gas prepayment is not part of it)."""
    quorum: int
    max_tokens: int
    prompt_tokens: int = 0
    """The prompt's tokens as the model reads them, template included (as
    ``prompt_tokens_estimate`` gives them)."""

    @property
    def per_seat_wei(self) -> int:
        """What each member of the winning cluster earns (the coordinator's fee / quorum)."""
        return self.fee_wei // max(self.quorum, 1)

    @property
    def work_tokens(self) -> int:
        """The tokens the job reads and writes: its prompt and, at most, its maxTokens."""
        return self.prompt_tokens + self.max_tokens

    @property
    def pay_per_token_wei(self) -> float:
        """Earnings per token of work: the queue's claim order (``jobs.pay_per_token_wei``)."""
        return self.per_seat_wei / max(self.work_tokens, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admit:
    model: str
    model_index: int
    job_deadline: datetime
    """When the inference must be done so that embedding and commit still fit."""
    estimate_s: float
    pay_per_token_wei: float
    """The job's place in the claim order."""
    earn_rate_wei_per_s: float
    """Fee per seat over the seconds of worker time its work takes at the model's speed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Terms:
    """What the coordinator fixed for a request beyond its own fields, as admission
    checks them."""

    reveal_window_s: float
    dispute_window_s: float
    slash_bps: int | None
    """None: not recorded (requests stored before the node kept it)."""
    expiry_grace_s: float | None
    """From the dispute window's end to ``expiresAt``; None: not recorded."""
    dim_bits: int | None = None
    """The embedding bits every reveal must carry; None: not recorded."""


def prompt_tokens_estimate(prompt: str) -> int:
    """The tokens a model reads for ``prompt``, without its tokenizer: its UTF-8 bytes over
    ``BYTES_PER_TOKEN``, plus the template's ``TEMPLATE_TOKENS``.

    Counted with SmolLM2's own tokenizer, English prose, Markdown and Python take 3.6-3.8
    bytes a token, French 3.1, digit-heavy text 2.2, Japanese 1.6, and no text less than
    one byte a token. So prose is overcounted by about a fifth (the contract's largest
    prompt, 8,192 bytes, is estimated at 2,763 tokens, and fits the default 4,096-token
    context with a long answer), and the densest text is undercounted up to three times:
    a prompt that then does not fit its context is refused by its worker at once
    (PromptTooLong, before any decoding), and its job is still credited a third of its
    work or more in the claim order. (Counting one byte a token would be an upper bound,
    but it declined the contract's own largest prompts.)
    """
    return -(-len(prompt.encode("utf-8")) // BYTES_PER_TOKEN) + TEMPLATE_TOKENS


def inference_deadline(commit_deadline: datetime, ctx: NodeContext) -> datetime:
    """When an inference must be done for its embedding and commit to land in time."""
    return commit_deadline - timedelta(seconds=ctx.commit_margin_s + ctx.embed_estimate_s)


def admit(
    *,
    accepted_models: Sequence[str],
    embedding_model: str,
    offer: Offer,
    terms: Terms,
    commit_deadline: datetime,
    now: datetime,
    ctx: NodeContext,
    loads: Mapping[str, ModelLoad],
) -> Admit | Refuse:
    """Pick a served model that the request pays for and that can finish in time, or say
    plainly why none can. ``loads`` are as the request would meet them (its pay, its
    deadline: ``inference_loads``).

    Among those that can: one with a free worker first, then the soonest finish (the
    faster model, when both are free), then the lighter queue, then the requester's order.
    """
    max_tokens, work_tokens = offer.max_tokens, offer.work_tokens
    window_s = (commit_deadline - now).total_seconds()
    if window_s > ctx.max_commit_window_s:
        # a commit locks our stake until the request expires, and its seat must stay
        # online to reveal: a requester must not tie a node up for weeks
        return _decline(
            f"commit deadline {window_s:,.0f} s away, further than this node commits to "
            f"({ctx.max_commit_window_s:,.0f} s: --max-commit-window-s)"
        )
    unaccepted = _unaccepted_terms(terms, ctx)
    if unaccepted is not None:
        return _decline(unaccepted)
    if embedding_job(embedding_model, "")[0] not in ctx.embedding_models:
        return _decline(f"embedding model {embedding_model!r} is not served here")
    signal = SIGNALS.get(embedding_model)
    if terms.dim_bits is not None and signal is not None and terms.dim_bits != signal.dimensions:
        # the reveal would revert (InvalidEmbeddingLength) and the seat be slashed
        return _decline(
            f"reveals must carry {terms.dim_bits} embedding bits (the coordinator's "
            f"registration of {embedding_model!r}); this node's give {signal.dimensions}"
        )
    served = [(i, ctx.models[m]) for i, m in enumerate(accepted_models) if m in ctx.models]
    if not served:
        return _decline(
            f"none of the accepted models {list(accepted_models)} is served here "
            f"(serving {sorted(ctx.models)})"
        )
    fitting = [(i, p) for i, p in served if work_tokens <= p.context_tokens]
    if not fitting:
        biggest = max(p.context_tokens for _, p in served)
        return _decline(
            f"maxTokens {max_tokens} and the prompt (estimated at {offer.prompt_tokens} "
            f"tokens) exceed the context a job gets here ({biggest} tokens)"
        )
    priced = [(i, p) for i, p in fitting if _asks(p, work_tokens) <= offer.per_seat_wei]
    if not priced:
        cheapest = min((p for _, p in fitting), key=lambda p: _asks(p, work_tokens))
        return _decline(
            f"pays {format_wei(offer.per_seat_wei)} wei per seat, this node asks "
            f"{format_wei(_asks(cheapest, work_tokens))} for {work_tokens} tokens of "
            f"{cheapest.name} (maxTokens {max_tokens} and the prompt, estimated at "
            f"{offer.prompt_tokens})"
        )
    finish_by = inference_deadline(commit_deadline, ctx)
    available_s = (finish_by - now).total_seconds()
    options = [_Option.of(i, p, work_tokens, loads.get(p.name)) for i, p in priced]
    feasible = sorted((o for o in options if o.estimate_s <= available_s), key=_Option.rank)
    if not feasible:
        fastest = min(options, key=lambda o: o.estimate_s)
        ahead = (
            f" behind {fastest.ahead_jobs} running or better-paying jobs"
            if fastest.ahead_jobs
            else ""
        )
        return _decline(
            f"cannot finish before the commit deadline: needs about {fastest.estimate_s:.1f} s "
            f"of inference{ahead}, {max(available_s, 0):.1f} s left after embedding and commit"
        )
    best = feasible[0]
    return Admit(
        model=best.profile.name,
        model_index=best.index,
        job_deadline=finish_by,
        estimate_s=best.estimate_s,
        pay_per_token_wei=offer.pay_per_token_wei,
        earn_rate_wei_per_s=offer.per_seat_wei * best.tokens_per_s / max(work_tokens, 1),
    )


def format_wei(wei: int) -> str:
    """A wei amount as an operator reads it: ``999``, ``1.0e12``, ``5.1e12``."""
    if wei < 1000:
        return str(wei)
    mantissa, exponent = f"{wei:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _unaccepted_terms(terms: Terms, ctx: NodeContext) -> str | None:
    accepts = ctx.accepts
    pace_s = ctx.block_pace.interval_s() if ctx.block_pace is not None else None
    windows = (
        ("reveal", "reveals", terms.reveal_window_s, accepts.min_reveal_window_s),
        ("dispute", "disputes", terms.dispute_window_s, accepts.min_dispute_window_s),
    )
    for name, verb, window_s, configured_s in windows:
        floor_s, why = _window_floor(
            configured_s, f"--min-{name}-window-s", accepts.window_blocks, pace_s
        )
        if window_s < floor_s:
            return f"{name} window {window_s:g} s, shorter than this node {verb} in ({why})"
    if terms.slash_bps is not None and terms.slash_bps > accepts.max_slash_bps:
        return (
            f"slashes {terms.slash_bps} bps of a seat's stake, more than this node accepts "
            f"({accepts.max_slash_bps} bps: --max-slash-bps)"
        )
    if terms.expiry_grace_s is not None and terms.expiry_grace_s < accepts.min_expiry_grace_s:
        return (
            f"expiry grace {terms.expiry_grace_s:g} s, shorter than this node settles in "
            f"({accepts.min_expiry_grace_s:g} s: --min-expiry-grace-s)"
        )
    return None


def _window_floor(
    configured_s: float, option: str, blocks: int, pace_s: float | None
) -> tuple[float, str]:
    """The shortest window accepted, and how to say it: the operator's seconds, or
    ``blocks`` of the chain's blocks where those take longer."""
    if pace_s is None or blocks * pace_s <= configured_s:
        return configured_s, f"{configured_s:g} s: {option}"
    return (
        blocks * pace_s,
        f"{blocks * pace_s:g} s: {blocks} blocks of {pace_s:g} s on this chain, "
        f"more than {option} {configured_s:g}",
    )


def _decline(why: str) -> Refuse:
    return Refuse(reason=f"declined: {why}")


def _asks(profile: ModelProfile, work_tokens: int) -> int:
    """The operator's price for this many tokens of work (read and written) of this model."""
    return profile.price_per_token_wei * work_tokens


@dataclass(frozen=True, slots=True)
class _Option:
    index: int
    profile: ModelProfile
    estimate_s: float
    free: bool
    ahead_tokens: int
    ahead_jobs: int
    tokens_per_s: float

    @classmethod
    def of(
        cls, index: int, profile: ModelProfile, work_tokens: int, load: ModelLoad | None
    ) -> _Option:
        jobs = load.jobs if load else 0
        ahead_tokens = load.ahead_tokens if load else 0
        ahead_jobs = load.ahead_jobs if load else 0
        workers = load.workers if load and load.workers is not None else profile.workers
        slots = load.slots if load and load.slots else max(workers, 1) * profile.slots
        speed = (load.tokens_per_s if load else None) or profile.prior_tokens_per_s
        if slots <= max(workers, 1):
            # until the answer is ready: the work run before it, shared by the workers, then
            # its own
            estimate_s = (ahead_tokens / max(workers, 1) + work_tokens) / speed
            return cls(index, profile, estimate_s, jobs < workers, ahead_tokens, ahead_jobs, speed)
        estimate_s = _batched_estimate_s(
            ahead_tokens=ahead_tokens,
            ahead_jobs=ahead_jobs,
            slots=slots,
            workers=max(workers, 1),
            worker_tokens_per_s=speed,
            job_tokens_per_s=load.sequence_tokens_per_s if load else None,
            work_tokens=work_tokens,
        )
        return cls(index, profile, estimate_s, jobs < slots, ahead_tokens, ahead_jobs, speed)

    def rank(self) -> tuple[bool, float, int, int]:
        return (not self.free, self.estimate_s, self.ahead_tokens, self.index)


def _batched_estimate_s(
    *,
    ahead_tokens: int,
    ahead_jobs: int,
    slots: int,
    workers: int,
    worker_tokens_per_s: float,
    job_tokens_per_s: float | None,
    work_tokens: int,
) -> float:
    """Seconds until a job's answer is ready on workers that decode ``slots`` jobs
    together: the wait for a slot, then its own tokens at one job's speed.

    The wait: none while fewer jobs than slots run before it; else the work of the jobs
    that must end before a slot frees (their share of the work ahead), drained at the
    workers' throughput. A job's own speed, unmeasured, is a full worker's share per slot.
    """
    must_end = ahead_jobs - slots + 1
    wait_s = 0.0
    if must_end > 0:
        wait_s = ahead_tokens * must_end / ahead_jobs / (workers * worker_tokens_per_s)
    own_speed = job_tokens_per_s or worker_tokens_per_s * workers / slots
    return wait_s + work_tokens / own_speed
