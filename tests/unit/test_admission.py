"""Admission and model selection: pure decisions over measured loads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from oracle.lifecycle.admission import Admit, ModelLoad, Refuse, admit
from oracle.lifecycle.context import ModelProfile, NodeContext

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAST, SLOW = "fast-model", "slow-model"


def context(*profiles: ModelProfile) -> NodeContext:
    return NodeContext(
        address="0x" + "11" * 20,
        coordinator="0x" + "22" * 20,
        models={p.name: p for p in profiles},
        embedding_models=("all-MiniLM-L6-v2",),
    )


CTX = context(
    ModelProfile(name=FAST, context_tokens=2048, prior_tokens_per_s=100),
    ModelProfile(name=SLOW, context_tokens=2048, prior_tokens_per_s=40),
)


def decide(
    loads: dict[str, ModelLoad],
    *,
    models: tuple[str, ...] = (SLOW, FAST),
    max_tokens: int = 64,
    deadline_s: float = 60,
    ctx: NodeContext = CTX,
) -> Admit | Refuse:
    return admit(
        accepted_models=models,
        embedding_model="all-MiniLM-L6-v2",
        max_tokens=max_tokens,
        commit_deadline=NOW + timedelta(seconds=deadline_s),
        now=NOW,
        ctx=ctx,
        loads=loads,
    )


def enqueue(loads: dict[str, ModelLoad], model: str, max_tokens: int = 64) -> None:
    load = loads.get(model, ModelLoad(tokens_per_s=None, queued_tokens=0))
    loads[model] = ModelLoad(
        tokens_per_s=load.tokens_per_s,
        queued_tokens=load.queued_tokens + max_tokens,
        jobs=load.jobs + 1,
    )


def test_both_free_converges_on_the_faster_model() -> None:
    choices = []
    for _ in range(5):
        decision = decide({})  # every earlier request already finished: both free again
        assert isinstance(decision, Admit)
        choices.append(decision.model)
    assert choices == [FAST] * 5


def test_requests_spread_over_both_models_when_one_is_busy() -> None:
    loads: dict[str, ModelLoad] = {}
    choices = []
    for _ in range(6):
        decision = decide(loads)
        assert isinstance(decision, Admit)
        choices.append(decision.model)
        enqueue(loads, decision.model)
    assert choices[:2] == [FAST, SLOW]  # the fast one is busy: the free slow one takes the next
    assert set(choices) == {FAST, SLOW}
    # afterwards each goes where it finishes soonest: the faster model takes more of them
    assert choices.count(FAST) > choices.count(SLOW)


def test_the_model_index_refers_to_the_requesters_list() -> None:
    decision = decide({}, models=(SLOW, FAST))
    assert isinstance(decision, Admit) and (decision.model, decision.model_index) == (FAST, 1)


def test_measured_speed_beats_the_prior() -> None:
    loads = {
        FAST: ModelLoad(tokens_per_s=10, queued_tokens=0),
        SLOW: ModelLoad(tokens_per_s=80, queued_tokens=0),
    }
    decision = decide(loads)
    assert isinstance(decision, Admit) and decision.model == SLOW


def test_a_busy_model_that_still_meets_the_deadline_beats_one_that_cannot() -> None:
    loads = {FAST: ModelLoad(tokens_per_s=100, queued_tokens=64, jobs=1)}
    decision = decide(loads, max_tokens=512, deadline_s=16)  # slow needs 12.8 s, has 12.5 s
    assert isinstance(decision, Admit) and decision.model == FAST


def test_refusals_say_why() -> None:
    unknown = decide({}, models=("other",))
    assert unknown == Refuse(
        reason="none of the accepted models ['other'] is served here "
        "(serving ['fast-model', 'slow-model'])"
    )
    too_big = decide({}, max_tokens=4096)
    assert isinstance(too_big, Refuse) and "maxTokens 4096 exceeds" in too_big.reason
    too_soon = decide({}, deadline_s=2)
    assert (
        isinstance(too_soon, Refuse)
        and "cannot finish before the commit deadline" in too_soon.reason
    )
    wrong_embedder = admit(
        accepted_models=(FAST,),
        embedding_model="nomic",
        max_tokens=8,
        commit_deadline=NOW + timedelta(seconds=60),
        now=NOW,
        ctx=CTX,
        loads={},
    )
    assert wrong_embedder == Refuse(reason="embedding model 'nomic' is not served here")
