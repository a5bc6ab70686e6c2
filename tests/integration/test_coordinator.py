"""The coordinator contract on a real anvil: every success path and every named revert."""

from __future__ import annotations

import random
from typing import Any

import pytest
from web3 import Web3

from oracle.chain.artifacts import decode_revert
from oracle.chain.commitment import new_salt, output_hash
from oracle.chain.coordinator import CoordinatorBinding
from tests.support.protocol import (
    DIM_BYTES,
    DISPUTE_WINDOW_S,
    EMBEDDING_MODEL,
    MODEL,
    REVEAL_WINDOW_S,
    Answer,
    Protocol,
    flip_bits,
    random_bits,
    revert_reason,
)

ZERO = "0x0000000000000000000000000000000000000000"
FEE = 3 * 10**15
ANSWER = "The capital of France is Paris."


@pytest.fixture
def protocol(chain: Any) -> Protocol:
    p = Protocol.deploy(chain.w3)
    p.register_oracles(6)
    return p


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


def honest_bits(rng: random.Random, count: int) -> list[bytes]:
    base = random_bits(rng)
    return [flip_bits(base, rng.sample(range(DIM_BYTES * 8), 10)) for _ in range(count)]


# --- registration --------------------------------------------------------------------


def test_registration_requires_the_minimum_stake_and_returns_it(chain: Any) -> None:
    p = Protocol.deploy(chain.w3)
    p.transact("setMinStake", p.coordinator.functions.setMinStake(10**18), p.owner)
    oracle = p.oracles[0]
    call = p.coordinator.functions.register()
    assert revert_reason(lambda: call.transact({"from": oracle, "value": 10**17})) == (
        f"StakeTooLow(stake={10**17}, required={10**18})"
    )
    p.transact("register", call, oracle, value=10**18)
    assert p.coordinator.functions.oracles(oracle).call() == [10**18, True]
    assert revert_reason(lambda: call.transact({"from": oracle, "value": 10**18})).startswith(
        "AlreadyRegistered"
    )
    before = p.balance(oracle)
    receipt = p.transact("deregister", p.coordinator.functions.deregister(), oracle)
    fee_paid = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert p.balance(oracle) == before + 10**18 - fee_paid
    assert p.coordinator.functions.oracles(oracle).call() == [0, False]


def test_only_the_owner_configures(protocol: Protocol) -> None:
    call = protocol.coordinator.functions.setMinFeePerSeat(1)
    assert revert_reason(lambda: call.transact({"from": protocol.requester})) == "NotOwner()"


# --- request validation ----------------------------------------------------------------

INVALID_REQUESTS = [
    ({"prompt": ""}, "EmptyPrompt()"),
    ({"prompt": "x" * 8193}, "PromptTooLong(length=8193, maxLength=8192)"),
    ({"models": []}, "EmptyModelList()"),
    ({"models": ["m"] * 9}, "TooManyModels(count=9, maxCount=8)"),
    ({"models": [MODEL, ""]}, "EmptyModelName(index=1)"),
    ({"temperature": 2001}, "TemperatureOutOfRange(temperature=2001)"),
    ({"max_tokens": 0}, "ZeroMaxTokens()"),
    ({"quorum": 0}, "InvalidQuorum(quorum=0, maxQuorum=16)"),
    ({"quorum": 17}, "InvalidQuorum(quorum=17, maxQuorum=16)"),
    ({"maxTimeMs": 0}, "ZeroTime()"),
    ({"secDistance": 10_001}, "SecDistanceOutOfRange(secDistance=10001)"),
    ({"secPercentage": 10_001}, "SecPercentageOutOfRange(secPercentage=10001)"),
    ({"secPercentage": 0}, "SecPercentageOutOfRange(secPercentage=0)"),
    ({"embeddingModel": "nomic-embed"}, "UnknownEmbeddingModel(embeddingModel=nomic-embed)"),
    (
        {"callback": "0x000000000000000000000000000000000000dEaD", "callback_gas": 2_000_001},
        "CallbackGasTooHigh(callbackGasLimit=2000001, maxCallbackGas=2000000)",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "reason"), INVALID_REQUESTS, ids=[r for _, r in INVALID_REQUESTS]
)
def test_invalid_requests_revert_with_a_clear_reason(
    protocol: Protocol, overrides: dict[str, Any], reason: str
) -> None:
    call = protocol.request_call(**overrides)
    assert (
        revert_reason(lambda: call.transact({"from": protocol.requester, "value": FEE})) == reason
    )


def test_fee_below_the_minimum_per_seat_reverts(protocol: Protocol) -> None:
    protocol.transact("fee", protocol.coordinator.functions.setMinFeePerSeat(1000), protocol.owner)
    call = protocol.request_call(quorum=3)
    sender = {"from": protocol.requester, "value": 2999}
    assert revert_reason(lambda: call.transact(sender)) == "FeeTooLow(sent=2999, required=3000)"


def test_request_event_carries_everything_a_node_needs(protocol: Protocol) -> None:
    call = protocol.request_call(
        prompt="Name a prime.", temperature=200, max_tokens=32, maxTimeMs=4500
    )
    receipt = protocol.transact("request", call, protocol.requester, value=FEE)
    block_time = protocol.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    (event,) = protocol.events(receipt, "InferenceRequested")
    args = event["args"]
    assert args["prompt"] == "Name a prime."
    assert args["acceptedModels"] == [MODEL]
    assert (args["temperature"], args["maxTokens"], args["fee"]) == (200, 32, FEE)
    assert tuple(args["frame"].values()) == (3, 4500, 3500, 6700, EMBEDDING_MODEL)
    assert args["commitDeadline"] == block_time + 5  # ceil(4500 ms)
    assert args["revealDeadline"] == args["commitDeadline"] + REVEAL_WINDOW_S
    assert args["disputeWindow"] == DISPUTE_WINDOW_S


# --- the full protocol -----------------------------------------------------------------


def test_honest_round_finalizes_pays_the_cluster_and_calls_back(
    protocol: Protocol, rng: random.Random
) -> None:
    consumer = protocol.deploy_helper("ExampleConsumer", protocol.coordinator.address)
    rid = protocol.request(fee=FEE, callback=consumer.address, callback_gas=300_000)
    bits = honest_bits(rng, 3)
    oracles = protocol.oracles[:3]
    answers = protocol.run_round(rid, [(o, ANSWER, b) for o, b in zip(oracles, bits, strict=True)])
    assert len(answers) == 3
    protocol.close_disputes(rid)
    before = [protocol.balance(o) for o in oracles]

    receipt = protocol.finalize(rid, bits, ANSWER)

    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["output"] == ANSWER
    assert event["args"]["model"] == MODEL
    assert event["args"]["clusterMask"] == 0b111
    assert event["args"]["callbackSucceeded"] is True
    assert [protocol.balance(o) - b for o, b in zip(oracles, before, strict=True)] == [FEE // 3] * 3
    assert consumer.functions.answers(rid).call() == [ANSWER, MODEL, True]
    reason = revert_reason(lambda: protocol.finalize_call(rid, bits, ANSWER).call())
    assert reason == f"RequestClosed(requestId={rid})"


def test_outlier_is_left_out_of_the_cluster_and_unpaid(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=4, secPercentage=7500)
    bits = [*honest_bits(rng, 3), random_bits(rng)]
    outputs = [ANSWER, ANSWER, "Paris.", "Bananas are yellow."]
    oracles = protocol.oracles[:4]
    protocol.run_round(rid, list(zip(oracles, outputs, bits, strict=True)))
    protocol.close_disputes(rid)
    before = [protocol.balance(o) for o in oracles]
    receipt = protocol.finalize(rid, bits, ANSWER)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b0111
    gains = [protocol.balance(o) - b for o, b in zip(oracles, before, strict=True)]
    assert gains == [FEE // 3] * 3 + [0]


def test_no_consensus_fails_and_refunds(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE)
    bits = [random_bits(rng) for _ in range(3)]
    protocol.run_round(
        rid, [(protocol.oracles[i], f"answer {i}", b) for i, b in enumerate(bits)]
    )
    protocol.close_disputes(rid)
    before = protocol.balance(protocol.requester)
    receipt = protocol.finalize(rid, bits, "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 2  # NoConsensus
    assert protocol.balance(protocol.requester) == before + FEE


def test_missing_reveals_count_against_the_quorum(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=3, secPercentage=10_000)
    bits = honest_bits(rng, 3)
    answers = [protocol.commit(protocol.oracles[i], rid, ANSWER, b) for i, b in enumerate(bits)]
    for answer in answers[:2]:
        protocol.reveal(answer)
    protocol.close_disputes(rid)  # one seat never reveals: the window runs to the reveal deadline
    receipt = protocol.finalize(rid, [*bits[:2], b""], ANSWER)
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 2


def test_no_commits_fails_after_the_commit_deadline(protocol: Protocol) -> None:
    rid = protocol.request(fee=FEE, maxTimeMs=2000)
    early = revert_reason(lambda: protocol.finalize_call(rid, [], "").call())
    assert early.startswith(f"FinalizeTooEarly(requestId={rid}")
    protocol.advance(3)
    receipt = protocol.finalize(rid, [], "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 0  # NoCommits


def test_commits_without_reveals_fail_after_the_reveal_deadline(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE)
    protocol.commit(protocol.oracles[0], rid, ANSWER, random_bits(rng))
    protocol.advance(30 + REVEAL_WINDOW_S + DISPUTE_WINDOW_S + 1)
    receipt = protocol.finalize(rid, [b""], "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 1  # NoReveals


# --- commit reverts --------------------------------------------------------------------


def test_commit_reverts(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=2)
    bits = random_bits(rng)
    stranger = Web3.to_checksum_address(protocol.w3.eth.accounts[9])
    fn = protocol.coordinator.functions
    assert revert_reason(lambda: fn.commit(rid, b"\x01" * 32).call({"from": stranger})) == (
        f"NotRegistered(oracle={stranger})"
    )
    assert revert_reason(
        lambda: fn.commit(rid, b"\x00" * 32).call({"from": protocol.oracles[0]})
    ) == ("EmptyCommitment()")
    assert revert_reason(
        lambda: fn.commit(999, b"\x01" * 32).call({"from": protocol.oracles[0]})
    ) == ("UnknownRequest(requestId=999)")
    protocol.commit(protocol.oracles[0], rid, ANSWER, bits)
    double = revert_reason(lambda: fn.commit(rid, b"\x01" * 32).call({"from": protocol.oracles[0]}))
    assert double == f"AlreadyCommitted(requestId={rid}, oracle={protocol.oracles[0]})"
    protocol.commit(protocol.oracles[1], rid, ANSWER, bits)
    full = revert_reason(lambda: fn.commit(rid, b"\x01" * 32).call({"from": protocol.oracles[2]}))
    assert full == f"SeatsFull(requestId={rid})"


def test_late_commit_reverts(protocol: Protocol) -> None:
    rid = protocol.request(fee=FEE, maxTimeMs=1000)
    protocol.advance(2)
    call = protocol.coordinator.functions.commit(rid, b"\x01" * 32)
    assert revert_reason(lambda: call.call({"from": protocol.oracles[0]})).startswith(
        f"CommitPhaseOver(requestId={rid}"
    )


# --- reveal reverts --------------------------------------------------------------------


def test_reveal_waits_for_all_seats_or_the_commit_deadline(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=2)
    answer = protocol.commit(protocol.oracles[0], rid, ANSWER, random_bits(rng))
    sender = {"from": answer.oracle}
    assert revert_reason(lambda: protocol.reveal_call(answer).call(sender)) == (
        f"RevealNotOpen(requestId={rid})"
    )
    protocol.advance(protocol.commit_time_left(rid) + 1)
    protocol.reveal(answer)
    assert revert_reason(lambda: protocol.reveal_call(answer).call(sender)) == (
        f"AlreadyRevealed(requestId={rid}, oracle={answer.oracle})"
    )


def test_reveal_that_does_not_match_its_commitment_reverts(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=1)
    answer = protocol.commit(protocol.oracles[0], rid, ANSWER, random_bits(rng))
    sender = {"from": answer.oracle}
    fn = protocol.coordinator.functions
    mismatch = f"CommitmentMismatch(requestId={rid}, oracle={answer.oracle})"
    tampered_output = fn.reveal(rid, "Lyon", 0, answer.bits, answer.salt)
    assert revert_reason(lambda: tampered_output.call(sender)) == mismatch
    tampered_bits = fn.reveal(rid, ANSWER, 0, flip_bits(answer.bits, [0]), answer.salt)
    assert revert_reason(lambda: tampered_bits.call(sender)) == mismatch
    wrong_salt = fn.reveal(rid, ANSWER, 0, answer.bits, b"\x00" * 32)
    assert revert_reason(lambda: wrong_salt.call(sender)) == mismatch
    bad_index = fn.reveal(rid, ANSWER, 1, answer.bits, answer.salt)
    assert (
        revert_reason(lambda: bad_index.call(sender))
        == "InvalidModelIndex(modelIndex=1, modelCount=1)"
    )
    short = fn.reveal(rid, ANSWER, 0, answer.bits[:47], answer.salt)
    assert (
        revert_reason(lambda: short.call(sender))
        == "InvalidEmbeddingLength(length=47, expected=48)"
    )
    stranger = {"from": protocol.oracles[1]}
    assert revert_reason(lambda: protocol.reveal_call(answer).call(stranger)) == (
        f"NotCommitted(requestId={rid}, oracle={protocol.oracles[1]})"
    )


def test_late_reveal_reverts(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=1)
    answer = protocol.commit(protocol.oracles[0], rid, ANSWER, random_bits(rng))
    protocol.advance(30 + REVEAL_WINDOW_S + 1)
    reason = revert_reason(lambda: protocol.reveal_call(answer).call({"from": answer.oracle}))
    assert reason.startswith(f"RevealPhaseOver(requestId={rid}")


# --- disputes and finalize -------------------------------------------------------------


def test_majority_dispute_excludes_a_reveal(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=3, secPercentage=6600)
    bits = honest_bits(rng, 3)
    oracles = protocol.oracles[:3]
    protocol.run_round(rid, list(zip(oracles, [ANSWER] * 3, bits, strict=True)))
    liar = oracles[0]
    protocol.dispute(oracles[1], rid, liar)
    again = protocol.coordinator.functions.dispute(rid, liar)
    assert revert_reason(lambda: again.call({"from": oracles[1]})) == (
        f"AlreadyDisputed(requestId={rid}, accused={liar}, disputer={oracles[1]})"
    )
    assert revert_reason(lambda: again.call({"from": liar})) == "SelfDispute()"
    outsider = {"from": protocol.oracles[4]}
    assert revert_reason(lambda: again.call(outsider)) == (
        f"NotARevealer(requestId={rid}, oracle={protocol.oracles[4]})"
    )
    protocol.dispute(oracles[2], rid, liar)
    protocol.close_disputes(rid)
    late = revert_reason(
        lambda: protocol.coordinator.functions.dispute(rid, oracles[1]).call({"from": liar})
    )
    assert late.startswith(f"DisputeWindowClosed(requestId={rid}")
    before = protocol.balance(liar)
    receipt = protocol.finalize(rid, bits, ANSWER)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b110
    assert event["args"]["winnerSeat"] == 1
    assert protocol.balance(liar) == before


def test_a_single_dispute_is_not_a_majority(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=3)
    bits = honest_bits(rng, 3)
    oracles = protocol.oracles[:3]
    protocol.run_round(rid, list(zip(oracles, [ANSWER] * 3, bits, strict=True)))
    protocol.dispute(oracles[1], rid, oracles[0])
    protocol.close_disputes(rid)
    receipt = protocol.finalize(rid, bits, ANSWER)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b111


def test_finalize_reverts_before_the_window_and_on_wrong_inputs(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=2)
    bits = honest_bits(rng, 2)
    protocol.run_round(rid, list(zip(protocol.oracles[:2], [ANSWER, "Paris"], bits, strict=True)))
    early = revert_reason(lambda: protocol.finalize_call(rid, bits, ANSWER).call())
    assert early.startswith(f"FinalizeTooEarly(requestId={rid}")
    protocol.close_disputes(rid)
    assert revert_reason(lambda: protocol.finalize_call(rid, bits[:1], ANSWER).call()) == (
        "SeatCountMismatch(given=1, seats=2)"
    )
    forged = [bits[0], flip_bits(bits[1], [3])]
    assert revert_reason(lambda: protocol.finalize_call(rid, forged, ANSWER).call()) == (
        "RevealMismatch(seat=1)"
    )
    hashes = protocol.output_hashes(rid, 2)
    forged_hashes = [hashes[0], output_hash("Lyon")]
    forged_call = protocol.finalize_call(rid, bits, ANSWER, forged_hashes)
    assert revert_reason(lambda: forged_call.call()) == "RevealMismatch(seat=1)"
    assert revert_reason(lambda: protocol.finalize_call(rid, bits, "Lyon").call()) == (
        f"WinnerOutputMismatch(requestId={rid}, winnerSeat=0)"
    )
    protocol.finalize(rid, bits, ANSWER)


# --- consumers -------------------------------------------------------------------------


def finalize_with_consumer(
    protocol: Protocol, rng: random.Random, consumer: str, callback_gas: int
) -> tuple[Any, int]:
    rid = protocol.request(fee=FEE, quorum=1, callback=consumer, callback_gas=callback_gas)
    bits = [random_bits(rng)]
    protocol.run_round(rid, [(protocol.oracles[0], ANSWER, bits[0])])
    protocol.close_disputes(rid)
    receipt = protocol.finalize(rid, bits, ANSWER, gas=3_000_000)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    return event, rid


def test_reverting_consumer_cannot_block_finalize(protocol: Protocol, rng: random.Random) -> None:
    consumer = protocol.deploy_helper("RevertingConsumer")
    event, _ = finalize_with_consumer(protocol, rng, consumer.address, 100_000)
    assert event["args"]["callbackSucceeded"] is False
    assert event["args"]["output"] == ANSWER


def test_gas_hungry_consumer_gets_only_its_limit(protocol: Protocol, rng: random.Random) -> None:
    consumer = protocol.deploy_helper("GasHungryConsumer")
    event, _ = finalize_with_consumer(protocol, rng, consumer.address, 500_000)
    assert event["args"]["callbackSucceeded"] is False
    receipt = protocol.w3.eth.get_transaction_receipt(event["transactionHash"])
    assert 500_000 < receipt["gasUsed"] < 800_000


def test_finalize_refuses_to_starve_the_callback(protocol: Protocol, rng: random.Random) -> None:
    consumer = protocol.deploy_helper("GasHungryConsumer")
    rid = protocol.request(fee=FEE, quorum=1, callback=consumer.address, callback_gas=1_000_000)
    bits = [random_bits(rng)]
    protocol.run_round(rid, [(protocol.oracles[0], ANSWER, bits[0])])
    protocol.close_disputes(rid)
    starved = protocol.finalize_call(rid, bits, ANSWER)
    reason = revert_reason(lambda: starved.call({"from": protocol.owner, "gas": 600_000}))
    assert reason.startswith("InsufficientGasForCallback(")


def test_reentrant_consumer_cannot_finalize_twice(protocol: Protocol, rng: random.Random) -> None:
    consumer = protocol.deploy_helper("ReentrantConsumer", protocol.coordinator.address)
    event, rid = finalize_with_consumer(protocol, rng, consumer.address, 500_000)
    assert event["args"]["callbackSucceeded"] is True
    assert consumer.functions.reentryFailed().call() is True
    assert decode_revert(consumer.functions.reentryError().call()) == "Reentrancy()"
    assert event["args"]["rewardPerOracle"] == FEE
    # the whole fee went out exactly once: nothing is left and nothing is owed
    assert protocol.balance(protocol.coordinator.address) == 0
    assert protocol.coordinator.functions.withdrawable(consumer.address).call() == 0
    assert protocol.stored_request(rid)["status"] == 2  # Finalized


def test_payment_to_a_payee_that_refuses_is_deferred(
    protocol: Protocol, rng: random.Random
) -> None:
    payee = protocol.deploy_helper("RejectingPayee", protocol.coordinator.address)
    protocol.transact("register", payee.functions.register(), protocol.owner)
    rid = protocol.request(fee=FEE, quorum=1)
    answer = Answer(
        request_id=rid,
        oracle=payee.address,
        output=ANSWER,
        model_index=0,
        bits=random_bits(rng),
        salt=new_salt(),
    )
    protocol.transact(
        "commit", payee.functions.commit(rid, Protocol.commitment(answer)), protocol.owner
    )
    reveal = payee.functions.reveal(rid, ANSWER, 0, answer.bits, answer.salt)
    protocol.transact("reveal", reveal, protocol.owner)
    protocol.revealed[(rid, payee.address)] = answer
    protocol.close_disputes(rid)
    receipt = protocol.finalize(rid, [answer.bits], ANSWER)
    (deferred,) = protocol.events(receipt, "PaymentDeferred")
    assert deferred["args"]["payee"] == payee.address
    assert protocol.coordinator.functions.withdrawable(payee.address).call() == FEE


def test_the_binding_asks_the_dispute_deadline_once_per_state_it_is_told(
    protocol: Protocol, rng: random.Random
) -> None:
    binding = CoordinatorBinding(protocol.w3, protocol.coordinator.address)
    rid = protocol.request(fee=FEE, quorum=2)
    first, second = (
        protocol.commit(protocol.oracles[i], rid, ANSWER, b)
        for i, b in enumerate(honest_bits(rng, 2))
    )
    protocol.reveal(first)
    one_revealed = binding.dispute_deadline(rid, as_of="one revealed")
    protocol.advance(3)
    protocol.reveal(second)  # all in: disputes now close a window after this reveal
    both_revealed = binding.dispute_deadline(rid)
    assert both_revealed < one_revealed  # before, the window ran from the reveal deadline
    assert binding.dispute_deadline(rid, as_of="one revealed") == one_revealed  # remembered
    assert binding.dispute_deadline(rid, as_of="both revealed") == both_revealed  # asked
