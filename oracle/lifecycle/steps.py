"""One request's life on this node, as a state machine: states, events, transitions.

The states are the request phases (``oracle.store.models.RequestPhase``). ``TRANSITIONS``
below is the one table of what moves a request from one to another, in the order of
DESIGN.md section 2; it is the single source of which step runs in which state.

    requested --admit--> committing --commits closed--> revealing --reveals ended-->
        finalizing --InferenceFinalized | InferenceFailed--> finalized | failed
    admission, a failed job or a commit refused or never landed --> skipped (reason kept);
    a skipped request is still settled by this node, as an outsider, if no one else does
    (finalize, or ``expire`` once it expired unsettled);
    a better ticket takes our seat before commits close --> evicted: nothing more to do
    (a reorg that undoes such a commit rewinds it to committing, see below)

Two kinds of rows:

- **node** rows (``run`` set): this node observes the event in Postgres (a job ended, a
  seat or reveal was stored, a deadline passed) and the function decides. In each state
  the rows are tried in table order until one moves the request; the new state's rows
  are tried next, in the same transaction. Every function answers ``Move`` or ``Wait``
  (until a time, or for news): the earliest ``Wait`` is when the clock alone can next
  change something, and the driver looks again then.
- **chain** rows (``run`` None): the listener records them from a chain event
  (``oracle.store.chain_state``); no step of this node runs.

A reorg is not an event of this machine but a rewind of it: ``rollback_after`` undoes
what orphaned blocks brought, and an outcome they held returns to the state it replaced.
Only a request whose announcement is undone while this node holds its answer (and salt)
cannot simply be forgotten: it is parked in ``orphaned`` (the chain rows below) until the
same request is mined again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from oracle.errors import OracleError
from oracle.lifecycle.transitions import (
    admit_request,
    commit_answer,
    embed_answer,
    end_reveals,
    finalize_request,
    give_up_commit,
    leave_if_evicted,
    load_seats,
    reveal_answer,
    verify_reveals,
)
from oracle.lifecycle.turn import Move, Step, Verdict, Wait
from oracle.store.models import RequestPhase, Seat

__all__ = [
    "FOLLOWED",
    "INITIAL",
    "TERMINAL",
    "TRANSITIONS",
    "Move",
    "Step",
    "Transition",
    "Wait",
    "advance",
]

logger = logging.getLogger(__name__)

TransitionFn = Callable[[Step, Sequence[Seat]], Verdict]


class TransitionRefused(OracleError):
    """A transition moved a request where the lifecycle's table does not let it go"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    source: RequestPhase
    event: str
    """What happened: DESIGN.md section 2's words, or the chain event's name."""
    targets: tuple[RequestPhase, ...]
    """Where it may lead; its own source when it only acts (queues a job, decides a tx)."""
    run: TransitionFn | None
    """The function that decides it; None: recorded by the listener from the chain."""


def _node(source: RequestPhase, event: str, run: TransitionFn, *to: RequestPhase) -> Transition:
    return Transition(source=source, event=event, targets=to, run=run)


def _chain(
    sources: Sequence[RequestPhase], event: str, *to: RequestPhase
) -> tuple[Transition, ...]:
    return tuple(Transition(source=s, event=event, targets=to, run=None) for s in sources)


_SETTLEABLE: tuple[RequestPhase, ...] = (
    "requested",
    "committing",
    "revealing",
    "finalizing",
    "skipped",
    "evicted",  # not followed any more, but its outcome is recorded all the same
)
_ANSWERABLE: tuple[RequestPhase, ...] = (
    "committing",
    "revealing",
    "finalizing",
    "skipped",
    "evicted",
)

# fmt: off
TRANSITIONS: tuple[Transition, ...] = (
    # -- node: state, event (DESIGN.md section 2), function, targets --------------------
    _node("requested", "InferenceRequested stored: serve it? (2.1)",
          admit_request, "committing", "skipped"),
    _node("committing", "our inference job ended (2.2)",
          embed_answer, "committing", "skipped"),
    _node("committing", "our embedding job ended: store salt, commit (2.2)",
          commit_answer, "committing", "skipped"),
    _node("committing", "Committed: a better ticket took our seat (2b)",
          leave_if_evicted, "evicted"),
    _node("committing", "commits closed: the commit deadline, or every eligible node (2.3)",
          reveal_answer, "revealing"),
    _node("committing", "our commit refused (TicketTooWeak), never sent by the commit "
          "deadline, or sent and no seat of ours seen by the reveal deadline",
          give_up_commit, "skipped"),
    _node("revealing", "Committed: a better ticket took our seat before commits closed",
          leave_if_evicted, "evicted"),
    _node("revealing", "every seat revealed, or the reveal deadline passed (2.3)",
          end_reveals, "finalizing"),
    _node("revealing", "a reveal stored, or a verification job ended (2.4)",
          verify_reveals, "revealing"),
    _node("finalizing", "a reveal stored, or a verification job ended (2.4)",
          verify_reveals, "finalizing"),
    _node("finalizing", "the dispute window closed and it is our turn; expired: expire (2.5)",
          finalize_request, "finalizing"),
    _node("skipped", "the dispute window closed and no seat settled it (2.5)",
          finalize_request, "skipped"),
    # -- chain: recorded by the listener (oracle.store.chain_state) ---------------------
    *_chain(_SETTLEABLE, "InferenceFinalized", "finalized"),
    *_chain(_SETTLEABLE, "InferenceFailed", "failed"),
    *_chain(_ANSWERABLE, "reorg: its announcement dropped, our answer kept", "orphaned"),
    *_chain(("orphaned",), "InferenceRequested: the same request mined again", *_ANSWERABLE),
    *_chain(("evicted",), "reorg: the commit that took a seat is gone", "committing"),
)
# fmt: on

INITIAL: tuple[RequestPhase, ...] = ("requested", "skipped")
"""Where a stored request starts: ``skipped`` when its strings are not text (declined)."""
TERMINAL: tuple[RequestPhase, ...] = ("finalized", "failed")
"""Settled on-chain: no transition leaves them (a reorg may rewind them)."""
FOLLOWED: tuple[RequestPhase, ...] = tuple(
    dict.fromkeys(t.source for t in TRANSITIONS if t.run is not None)
)
"""States in which this node still has steps to take."""

_NODE_ROWS: Mapping[RequestPhase, tuple[Transition, ...]] = {
    state: tuple(t for t in TRANSITIONS if t.source == state and t.run is not None)
    for state in FOLLOWED
}


def advance(step: Step) -> datetime | None:
    """Take every transition the request is ready for, under the caller's row lock.

    Returns when the clock alone may next change something (None: only news can).
    """
    seats = load_seats(step.session, step.request.id)  # only the listener changes them
    for _ in range(len(_NODE_ROWS) + 1):  # the node rows hold no cycle
        moved = False
        wake_at: list[datetime] = []
        for transition in _NODE_ROWS.get(step.request.phase, ()):
            assert transition.run is not None
            verdict = transition.run(step, seats)
            if isinstance(verdict, Move):
                _move(step, transition, verdict)
                moved = True
                break
            if verdict.until is not None:
                wake_at.append(verdict.until)
        if not moved:
            return min(wake_at, default=None)
    raise TransitionRefused(f"request {step.request.id} kept moving")


def _move(step: Step, transition: Transition, verdict: Move) -> None:
    if verdict.to not in transition.targets:
        raise TransitionRefused(
            f"{transition.run.__name__ if transition.run else 'chain'}: "
            f"{transition.source} -> {verdict.to} is not in the table"
        )
    step.request.phase = verdict.to
    if verdict.to in ("skipped", "evicted"):
        step.request.skip_reason = verdict.reason
        logger.warning("not taking part", extra={**step.log, "reason": verdict.reason})
    else:
        logger.info(
            "request moved",
            extra={**step.log, "from": transition.source, "to": verdict.to},
        )
