"""Admission and model selection: pure decisions over prices and measured loads."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from oracle.domain.pace import BlockPace
from oracle.lifecycle.admission import (
    TEMPLATE_TOKENS,
    Admit,
    ModelLoad,
    Offer,
    Refuse,
    Terms,
    admit,
    format_wei,
    prompt_tokens_estimate,
)
from oracle.lifecycle.context import AcceptedTerms, ModelProfile, NodeContext

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TERMS = Terms(
    reveal_window_s=30, dispute_window_s=10, slash_bps=1000, expiry_grace_s=3600, dim_bits=384
)
"""The coordinator's defaults for the local devnet's tests."""
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
    fee_wei: int = 10**15,
    quorum: int = 1,
    prompt_tokens: int = 0,
    terms: Terms = TERMS,
) -> Admit | Refuse:
    return admit(
        accepted_models=models,
        embedding_model="all-MiniLM-L6-v2",
        offer=Offer(
            fee_wei=fee_wei, quorum=quorum, max_tokens=max_tokens, prompt_tokens=prompt_tokens
        ),
        terms=terms,
        commit_deadline=NOW + timedelta(seconds=deadline_s),
        now=NOW,
        ctx=ctx,
        loads=loads,
    )


def enqueue(loads: dict[str, ModelLoad], model: str, max_tokens: int = 64) -> None:
    """A job admitted at the same pay: it runs before the next one (it is due no later)."""
    load = loads.get(model, ModelLoad(tokens_per_s=None))
    loads[model] = ModelLoad(
        tokens_per_s=load.tokens_per_s,
        ahead_tokens=load.ahead_tokens + max_tokens,
        ahead_jobs=load.ahead_jobs + 1,
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
        FAST: ModelLoad(tokens_per_s=10),
        SLOW: ModelLoad(tokens_per_s=80),
    }
    decision = decide(loads)
    assert isinstance(decision, Admit) and decision.model == SLOW


def test_a_busy_model_that_still_meets_the_deadline_beats_one_that_cannot() -> None:
    loads = {FAST: ModelLoad(tokens_per_s=100, ahead_tokens=64, ahead_jobs=1, jobs=1)}
    decision = decide(loads, max_tokens=512, deadline_s=16)  # slow needs 12.8 s, has 12.5 s
    assert isinstance(decision, Admit) and decision.model == FAST


def test_refusals_say_why() -> None:
    unknown = decide({}, models=("other",))
    assert unknown == Refuse(
        reason="declined: none of the accepted models ['other'] is served here "
        "(serving ['fast-model', 'slow-model'])"
    )
    too_big = decide({}, max_tokens=4096)
    assert isinstance(too_big, Refuse) and "maxTokens 4096 and the prompt" in too_big.reason
    too_soon = decide({}, deadline_s=2)
    assert too_soon == Refuse(
        reason="declined: cannot finish before the commit deadline: needs about 0.6 s of "
        "inference, 0.0 s left after embedding and commit"
    )
    wrong_embedder = admit_embedding("nomic")
    assert wrong_embedder == Refuse(reason="declined: embedding model 'nomic' is not served here")


def test_a_commit_deadline_weeks_ahead_is_declined() -> None:
    """maxTimeMs may reach 2**32 ms: a commit would lock the stake for about 50 days and
    keep the node online to reveal; past the node's window it declines, saying so."""
    weeks = decide({}, deadline_s=(2**32 - 1) / 1000)
    assert weeks == Refuse(
        reason="declined: commit deadline 4,294,967 s away, further than this node commits "
        "to (3,600 s: --max-commit-window-s)"
    )
    assert isinstance(decide({}, deadline_s=3600), Admit)  # the window itself is fine
    wider = dataclasses.replace(CTX, max_commit_window_s=5_000_000)
    assert isinstance(decide({}, deadline_s=(2**32 - 1) / 1000, ctx=wider), Admit)


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        (
            {"reveal_window_s": 1},
            "reveal window 1 s, shorter than this node reveals in (10 s: --min-reveal-window-s)",
        ),
        (
            {"dispute_window_s": 4},
            "dispute window 4 s, shorter than this node disputes in (5 s: --min-dispute-window-s)",
        ),
        (
            {"slash_bps": 10_000},
            "slashes 10000 bps of a seat's stake, more than this node accepts (2000 bps: "
            "--max-slash-bps)",
        ),
        (
            {"expiry_grace_s": 1},
            "expiry grace 1 s, shorter than this node settles in (30 s: --min-expiry-grace-s)",
        ),
    ],
)
def test_terms_an_owner_set_against_the_nodes_are_declined(
    changed: dict[str, float], reason: str
) -> None:
    """The owner sets the windows and the slash rate: 1 s windows and a 100 % slash cost
    every seat its stake, and a dispute window under a block leaves a lie undisputed."""
    assert decide({}, terms=dataclasses.replace(TERMS, **changed)) == Refuse(
        reason=f"declined: {reason}"
    )
    longer_blocks = dataclasses.replace(CTX, accepts=AcceptedTerms(min_dispute_window_s=30))
    assert decide({}, ctx=longer_blocks) == Refuse(
        reason="declined: dispute window 10 s, shorter than this node disputes in (30 s: "
        "--min-dispute-window-s)"
    )
    unrecorded = dataclasses.replace(TERMS, slash_bps=None, expiry_grace_s=None, dim_bits=None)
    assert isinstance(decide({}, terms=unrecorded), Admit)


def test_a_bit_count_the_owner_changed_is_declined() -> None:
    """The owner re-registers the embedding model with 512 bits: every reveal of 48 bytes
    would revert (InvalidEmbeddingLength) and every committed seat be slashed."""
    assert decide({}, terms=dataclasses.replace(TERMS, dim_bits=512)) == Refuse(
        reason="declined: reveals must carry 512 embedding bits (the coordinator's "
        "registration of 'all-MiniLM-L6-v2'); this node's give 384"
    )
    assert isinstance(decide({}, terms=dataclasses.replace(TERMS, dim_bits=None)), Admit)


def test_windows_are_held_to_the_chains_blocks_where_those_are_slower() -> None:
    """On a chain of 12 s blocks a 10 s dispute window closes before a dispute can land
    (docs/security.md, open risk 7): the windows must hold three of the chain's blocks
    as the listener timed them, or the operator's seconds where those are longer."""
    slow = BlockPace()
    slow.record(0, 12)
    at_twelve = dataclasses.replace(CTX, block_pace=slow)
    assert decide({}, ctx=at_twelve, terms=dataclasses.replace(TERMS, reveal_window_s=40)) == (
        Refuse(
            reason="declined: dispute window 10 s, shorter than this node disputes in (36 s: "
            "3 blocks of 12 s on this chain, more than --min-dispute-window-s 5)"
        )
    )
    assert decide({}, ctx=at_twelve) == Refuse(
        reason="declined: reveal window 30 s, shorter than this node reveals in (36 s: "
        "3 blocks of 12 s on this chain, more than --min-reveal-window-s 10)"
    )
    wide = dataclasses.replace(TERMS, reveal_window_s=36, dispute_window_s=36)
    assert isinstance(decide({}, ctx=at_twelve, terms=wide), Admit)
    confirming = dataclasses.replace(at_twelve, accepts=AcceptedTerms(window_blocks=4))
    assert isinstance(decide({}, ctx=confirming, terms=wide), Refuse)  # 48 s with a confirmation

    fast = BlockPace()
    fast.record(0, 1)  # the devnet: the operator's seconds are the longer floor
    assert isinstance(decide({}, ctx=dataclasses.replace(CTX, block_pace=fast)), Admit)
    assert isinstance(decide({}, ctx=dataclasses.replace(CTX, block_pace=BlockPace())), Admit)


def test_a_signal_of_a_served_embedding_model_is_served() -> None:
    decision = admit_embedding("all-MiniLM-L6-v2/echo-norm-centred-d7b956d1")
    assert isinstance(decision, Admit)


def admit_embedding(embedding_model: str) -> Admit | Refuse:
    """A small request to the fast model that names this embedding model."""
    return admit(
        accepted_models=(FAST,),
        embedding_model=embedding_model,
        offer=Offer(fee_wei=10**15, quorum=1, max_tokens=8),
        terms=TERMS,
        commit_deadline=NOW + timedelta(seconds=60),
        now=NOW,
        ctx=CTX,
        loads={},
    )


# --- economics: the operator's price per token of work --------------------------------

SMOL = "SmolLM2-135M-Instruct-Q4_1"
PRICED = context(
    ModelProfile(
        name=FAST, context_tokens=2048, prior_tokens_per_s=100, price_per_token_wei=3 * 10**10
    ),
    ModelProfile(
        name=SLOW, context_tokens=2048, prior_tokens_per_s=40, price_per_token_wei=2 * 10**10
    ),
    ModelProfile(name=SMOL, context_tokens=8192, price_per_token_wei=int(2e10)),
)


def test_a_request_paying_less_per_seat_than_the_price_is_declined_with_the_numbers() -> None:
    decision = decide({}, models=(SMOL,), max_tokens=256, fee_wei=10**12, ctx=PRICED)
    assert decision == Refuse(
        reason="declined: pays 1.0e12 wei per seat, this node asks 5.1e12 for 256 tokens of "
        "SmolLM2-135M-Instruct-Q4_1 (maxTokens 256 and the prompt, estimated at 0)"
    )


def test_the_decline_names_the_cheapest_model_that_could_serve() -> None:
    decision = decide({}, models=(FAST, SLOW), max_tokens=100, fee_wei=10**12, ctx=PRICED)
    assert decision == Refuse(
        reason="declined: pays 1.0e12 wei per seat, this node asks 2.0e12 for 100 tokens of "
        "slow-model (maxTokens 100 and the prompt, estimated at 0)"
    )


def test_the_price_counts_the_prompt_a_request_makes_the_model_read() -> None:
    """A context-filling prompt with maxTokens 1 holds a worker as long as a request that
    writes as many tokens: at the price of one token it would be served at a loss."""
    price_of_one = 2 * 10**10  # SMOL's price for one token
    decision = decide(
        {}, models=(SMOL,), max_tokens=1, prompt_tokens=3_000, fee_wei=price_of_one, ctx=PRICED
    )
    assert decision == Refuse(
        reason="declined: pays 2.0e10 wei per seat, this node asks 6.0e13 for 3001 tokens of "
        "SmolLM2-135M-Instruct-Q4_1 (maxTokens 1 and the prompt, estimated at 3000)"
    )
    paid = decide(
        {},
        models=(SMOL,),
        max_tokens=1,
        prompt_tokens=3_000,
        fee_wei=3_001 * price_of_one,
        deadline_s=600,
        ctx=PRICED,
    )
    assert isinstance(paid, Admit)


def test_each_seat_earns_fee_over_quorum() -> None:
    at_price = 2 * 10**10 * 256  # the slow model's price for 256 tokens
    exact = decide({}, models=(SLOW,), max_tokens=256, fee_wei=3 * at_price, quorum=3, ctx=PRICED)
    assert isinstance(exact, Admit)  # what the price asks is enough
    short = decide(
        {}, models=(SLOW,), max_tokens=256, fee_wei=3 * at_price - 1, quorum=3, ctx=PRICED
    )
    assert isinstance(short, Refuse) and short.reason.startswith(
        "declined: pays 5.1e12 wei per seat, this node asks 5.1e12"
    )  # one wei short: the coordinator's fee / quorum rounds down


def test_a_model_the_request_does_not_pay_for_is_not_chosen_even_when_faster() -> None:
    fee = 2 * 10**10 * 64  # pays the slow model's price, not the fast one's
    decision = decide({}, models=(FAST, SLOW), max_tokens=64, fee_wei=fee, ctx=PRICED)
    assert isinstance(decision, Admit) and decision.model == SLOW


def test_a_free_node_serves_a_request_that_pays_nothing() -> None:
    decision = decide({}, fee_wei=0, quorum=5)
    assert isinstance(decision, Admit) and decision.pay_per_token_wei == 0


def test_the_price_is_checked_before_the_deadline() -> None:
    decision = decide({}, models=(SMOL,), max_tokens=256, fee_wei=0, deadline_s=1, ctx=PRICED)
    assert isinstance(decision, Refuse) and decision.reason.startswith("declined: pays 0 wei")


def test_offer_pay_per_token_and_earn_rate() -> None:
    offer = Offer(fee_wei=10**16, quorum=3, max_tokens=256)
    assert offer.per_seat_wei == 3_333_333_333_333_333
    assert offer.pay_per_token_wei == pytest.approx(3_333_333_333_333_333 / 256)
    decision = decide({FAST: ModelLoad(tokens_per_s=50)}, models=(FAST,), max_tokens=256,
                      fee_wei=10**16, quorum=3)  # fmt: skip
    assert isinstance(decision, Admit)
    assert decision.pay_per_token_wei == offer.pay_per_token_wei
    # 256 tokens at 50 tokens/s: 5.12 s of worker time for 3.33e15 wei
    assert decision.earn_rate_wei_per_s == pytest.approx(3_333_333_333_333_333 / 5.12)


@pytest.mark.parametrize(
    ("wei", "shown"),
    [(0, "0"), (999, "999"), (1000, "1.0e3"), (10**12, "1.0e12"), (5_120_000_000_000, "5.1e12"),
     (9_960_000_000_000, "1.0e13"), (10**17, "1.0e17")],
)  # fmt: skip
def test_wei_amounts_read_as_an_operator_reads_them(wei: int, shown: str) -> None:
    assert format_wei(wei) == shown


# --- paying work first: only the work that runs before a request delays it ----------


def test_cheap_work_queued_earlier_does_not_delay_a_request_that_pays_more() -> None:
    # 60 cheap jobs of 256 tokens are queued, none running: the claim order runs this one
    # first, so none of them is ahead of it
    flooded = {FAST: ModelLoad(tokens_per_s=100, ahead_tokens=0, ahead_jobs=0, jobs=60)}
    decision = decide(flooded, models=(FAST,), max_tokens=256, deadline_s=10)
    assert isinstance(decision, Admit) and decision.estimate_s == pytest.approx(2.56)


def test_a_request_behind_work_that_pays_as_much_or_more_is_declined_when_it_cannot_fit() -> None:
    behind = {FAST: ModelLoad(tokens_per_s=100, ahead_tokens=12 * 256, ahead_jobs=12, jobs=60)}
    decision = decide(behind, models=(FAST,), max_tokens=256, deadline_s=30)
    assert decision == Refuse(
        reason="declined: cannot finish before the commit deadline: needs about 33.3 s of "
        "inference behind 12 running or better-paying jobs, 26.5 s left after embedding and "
        "commit"
    )


def test_work_ahead_is_shared_by_the_models_workers() -> None:
    behind = {FAST: ModelLoad(tokens_per_s=100, ahead_tokens=12 * 256, ahead_jobs=12, workers=4)}
    decision = decide(behind, models=(FAST,), max_tokens=256, deadline_s=30)
    assert isinstance(decision, Admit) and decision.estimate_s == pytest.approx(10.24)


def test_a_flood_at_one_price_fills_what_the_deadline_holds_and_no_more() -> None:
    loads: dict[str, ModelLoad] = {FAST: ModelLoad(tokens_per_s=100)}
    decisions = []
    for _ in range(60):
        decision = decide(loads, models=(FAST,), max_tokens=256, deadline_s=30, fee_wei=10**12)
        decisions.append(decision)
        if isinstance(decision, Admit):
            enqueue(loads, FAST, 256)
    admitted = [d for d in decisions if isinstance(d, Admit)]
    assert len(admitted) == 10  # 10 x 2.56 s fit in the 26.5 s left; the 11th would not
    assert all(isinstance(d, Refuse) for d in decisions[10:])


# --- a job's work is its prompt and its maxTokens ------------------------------------

ATTACK_PROMPT = "quartz123 " * 800
"""8,000 bytes that SmolLM2 reads as about 3,700 tokens."""
HONEST_PROMPT = "What is the capital of France? Answer in one short sentence."


def test_the_prompt_estimate_is_a_third_of_its_bytes_plus_the_template() -> None:
    assert prompt_tokens_estimate(ATTACK_PROMPT) == 2667 + TEMPLATE_TOKENS
    assert prompt_tokens_estimate("日本") == 2 + TEMPLATE_TOKENS  # bytes, not characters
    # the contract's largest prompt leaves room for an answer in the default context
    assert prompt_tokens_estimate("x" * 8192) == 2763


def test_a_huge_prompt_with_one_output_token_pays_per_token_of_its_prompt_too() -> None:
    """maxTokens 1 at the minimum fee no longer outranks a request paying 50 times more
    for 64 tokens: it pays per token of everything the worker reads and writes."""
    attack_prompt = prompt_tokens_estimate(ATTACK_PROMPT)
    honest_prompt = prompt_tokens_estimate(HONEST_PROMPT)
    attacker = Offer(fee_wei=10**12, quorum=1, max_tokens=1, prompt_tokens=attack_prompt)
    honest = Offer(fee_wei=5 * 10**13, quorum=1, max_tokens=64, prompt_tokens=honest_prompt)
    assert attacker.work_tokens == 2667 + TEMPLATE_TOKENS + 1
    assert attacker.pay_per_token_wei == pytest.approx(10**12 / attacker.work_tokens)
    assert honest.pay_per_token_wei > 100 * attacker.pay_per_token_wei


def test_the_time_estimate_and_earn_rate_count_the_prompt() -> None:
    decision = decide({FAST: ModelLoad(tokens_per_s=100)}, models=(FAST,), max_tokens=64,
                      prompt_tokens=936, fee_wei=10**15)  # fmt: skip
    assert isinstance(decision, Admit)
    assert decision.estimate_s == pytest.approx(10.0)  # 1,000 tokens at 100 a second
    assert decision.earn_rate_wei_per_s == pytest.approx(10**15 / 10.0)
    too_long = decide({FAST: ModelLoad(tokens_per_s=100)}, models=(FAST,), max_tokens=64,
                      prompt_tokens=1900, deadline_s=20)  # fmt: skip
    assert isinstance(too_long, Refuse) and "needs about 19.6 s of inference" in too_long.reason


def test_work_ahead_counts_in_the_same_tokens_as_the_new_job() -> None:
    # one job ahead whose prompt and maxTokens make 2,000 tokens at 100 a second
    behind = {FAST: ModelLoad(tokens_per_s=100, ahead_tokens=2000, ahead_jobs=1, jobs=1)}
    decision = decide(behind, models=(FAST,), max_tokens=64, prompt_tokens=36, deadline_s=60)
    assert isinstance(decision, Admit) and decision.estimate_s == pytest.approx(21.0)


def test_a_prompt_and_max_tokens_that_exceed_the_context_a_job_gets_are_declined() -> None:
    """The worker refuses prompt + maxTokens > context (PromptTooLong): admission declines
    it first, with the numbers, rather than let it take queue room."""
    slot = context(ModelProfile(name=FAST, context_tokens=4096, prior_tokens_per_s=100))
    prompt = prompt_tokens_estimate("word " * 900)  # 4,500 bytes: 1,532 tokens
    too_big = decide({}, models=(FAST,), ctx=slot, max_tokens=3000, prompt_tokens=prompt,
                     deadline_s=600)  # fmt: skip
    assert too_big == Refuse(
        reason="declined: maxTokens 3000 and the prompt (estimated at 1532 tokens) "
        "exceed the context a job gets here (4096 tokens)"
    )
    fits = decide({}, models=(FAST,), ctx=slot, max_tokens=4096 - prompt,
                  prompt_tokens=prompt, deadline_s=600)  # fmt: skip
    assert isinstance(fits, Admit)  # exactly full is what the worker still runs
