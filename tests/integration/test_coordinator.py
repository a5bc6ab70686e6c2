"""The coordinator contract on a real anvil: every success path and every named revert."""

from __future__ import annotations

import random
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from web3 import Web3

from oracle.chain.artifacts import decode_revert
from oracle.chain.commitment import output_hash
from oracle.chain.coordinator import CoordinatorBinding
from tests.support.protocol import (
    CALLBACK_GAS_PRICE,
    DIM_BYTES,
    DISPUTE_WINDOW_S,
    EMBEDDING_MODEL,
    MODEL,
    REVEAL_WINDOW_S,
    STAKE,
    Protocol,
    call_reverts,
    flip_bits,
    random_bits,
    revert_reason,
)

ZERO = "0x0000000000000000000000000000000000000000"
FEE = 3 * 10**15
ANSWER = "The capital of France is Paris."
SLASH = STAKE * 1000 // 10_000  # the default slashBps (10 %) of a fresh node's stake
EXPIRY_GRACE_S = 3600
UNBONDING_S = 86_400


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


def test_registration_requires_the_minimum_stake_and_returns_it_after_unbonding(
    chain: Any,
) -> None:
    p = Protocol.deploy(chain.w3)
    fn = p.coordinator.functions
    assert fn.minStake().call() == STAKE  # 0.01 ether by default
    p.transact("setMinStake", fn.setMinStake(10**18), p.owner)
    oracle = p.oracles[0]
    call = fn.register()
    assert revert_reason(lambda: call.transact({"from": oracle, "value": 10**17})) == (
        f"StakeTooLow(stake={10**17}, required={10**18})"
    )
    before = p.worth(oracle)
    receipt = p.transact("register", call, oracle, value=10**18)
    state = p.oracle_state(oracle)
    assert (state["stake"], state["registered"]) == (10**18, True)
    assert state["eligibleFrom"] == receipt["blockNumber"]
    assert (state["lockedUntil"], state["unbondingEndsAt"]) == (0, 0)
    assert fn.activeCount().call() == 1
    assert revert_reason(lambda: call.transact({"from": oracle, "value": 10**18})).startswith(
        "AlreadyRegistered"
    )
    withdraw = fn.withdrawStake()
    assert revert_reason(lambda: withdraw.call({"from": oracle})) == (
        f"NotUnbonding(oracle={oracle})"
    )

    receipt = p.transact("deregister", fn.deregister(), oracle)
    ends_at = p.w3.eth.get_block(receipt["blockNumber"])["timestamp"] + UNBONDING_S
    assert p.oracle_state(oracle)["unbondingEndsAt"] == ends_at
    assert fn.activeCount().call() == 0
    assert revert_reason(lambda: fn.deregister().call({"from": oracle})) == (
        f"OracleUnbonding(oracle={oracle})"
    )
    assert revert_reason(lambda: fn.addStake().call({"from": oracle, "value": 1})) == (
        f"OracleUnbonding(oracle={oracle})"
    )
    assert revert_reason(lambda: withdraw.call({"from": oracle})) == (
        f"StillUnbonding(oracle={oracle}, unbondingEndsAt={ends_at})"
    )
    p.advance(ends_at - p.now())
    p.transact("withdrawStake", withdraw, oracle)
    assert p.worth(oracle) == before
    assert p.oracle_state(oracle)["registered"] is False
    assert p.balance(p.coordinator.address) == 0


def test_added_stake_counts_only_for_later_requests(protocol: Protocol) -> None:
    oracle = protocol.oracles[0]
    fn = protocol.coordinator.functions
    assert revert_reason(lambda: fn.addStake().call({"from": oracle, "value": 0})) == (
        "StakeTooLow(stake=0, required=1)"
    )
    rid = protocol.request(fee=FEE)
    receipt = protocol.transact("addStake", fn.addStake(), oracle, value=STAKE)
    (added,) = protocol.events(receipt, "StakeAdded")
    assert (added["args"]["amount"], added["args"]["stake"]) == (STAKE, 2 * STAKE)
    assert protocol.oracle_state(oracle)["eligibleFrom"] == receipt["blockNumber"]
    # the request's seed was known before the stake came: the node sits this one out
    late = protocol.raw_commit_call(rid, b"\x01" * 32)
    assert revert_reason(lambda: late.call({"from": oracle})) == (
        f"NotEligible(requestId={rid}, oracle={oracle})"
    )
    later = protocol.request(fee=FEE)
    protocol.commit(oracle, later, ANSWER, bytes(DIM_BYTES))
    (seat, _) = fn.getSeat(later, 0).call()
    assert seat[1] == protocol.ticket(later, oracle, 2 * STAKE)


def test_only_the_owner_configures(protocol: Protocol) -> None:
    fn = protocol.coordinator.functions
    for call in (
        fn.setMinFeePerSeat(1),
        fn.setMinStake(10**18),
        fn.setWindows(10, 10),
        fn.setExpiryGrace(10),
        fn.setSlashBps(0),
        fn.setUnbondingPeriod(3600),
        fn.setMaxPromptBytes(10),
        fn.setEmbeddingModel("m", 8),
        fn.transferOwnership(protocol.requester),
    ):
        assert call_reverts(call, protocol.requester) == "NotOwner()"


PARAMETERS_OUT_OF_RANGE = [
    ("setMinStake", (10**14 - 1,), "minStake", 10**14 - 1, 10**14, 2**128 - 1),
    ("setMinFeePerSeat", (0,), "minFeePerSeat", 0, 1, 2**96 - 1),
    ("setMaxPromptBytes", (0,), "maxPromptBytes", 0, 1, 2**20),
    ("setWindows", (0, 10), "revealWindow", 0, 1, 86_400),
    ("setWindows", (10, 86_401), "disputeWindow", 86_401, 1, 86_400),
    ("setExpiryGrace", (0,), "expiryGrace", 0, 1, 86_400),
    ("setSlashBps", (10_001,), "slashBps", 10_001, 0, 10_000),
    ("setUnbondingPeriod", (3599,), "unbondingPeriod", 3599, 3600, 30 * 86_400),
    (
        "setUnbondingPeriod",
        (30 * 86_400 + 1,),
        "unbondingPeriod",
        30 * 86_400 + 1,
        3600,
        30 * 86_400,
    ),
]


@pytest.mark.parametrize(
    ("setter", "args", "name", "value", "low", "high"),
    PARAMETERS_OUT_OF_RANGE,
    ids=[f"{row[0]}{row[1]}" for row in PARAMETERS_OUT_OF_RANGE],
)
def test_owner_parameters_are_bounded(
    protocol: Protocol,
    setter: str,
    args: tuple[int, ...],
    name: str,
    value: int,
    low: int,
    high: int,
) -> None:
    call = getattr(protocol.coordinator.functions, setter)(*args)
    assert revert_reason(lambda: call.transact({"from": protocol.owner})) == (
        f"ParameterOutOfRange(parameter={name}, value={value}, min={low}, max={high})"
    )


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
    ({"models": [MODEL, "m" * 256]}, "ModelNameTooLong(index=1, length=256, maxLength=255)"),
    ({"embeddingModel": "nomic-embed"}, "UnknownEmbeddingModel(embeddingModel=nomic-embed)"),
    (
        {"callback": "0x000000000000000000000000000000000000dEaD", "callback_gas": 2_000_001},
        "CallbackGasTooHigh(callbackGasLimit=2000001, maxCallbackGas=2000000)",
    ),
    (
        {"callback": "0x000000000000000000000000000000000000dEaD", "callback_gas": 100_000},
        "NoCodeAtCallback(callback=0x000000000000000000000000000000000000dEaD)",
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
    assert protocol.coordinator.functions.minFeePerSeat().call() == 10**12  # never 0
    protocol.transact("fee", protocol.coordinator.functions.setMinFeePerSeat(1000), protocol.owner)
    call = protocol.request_call(quorum=3)
    sender = {"from": protocol.requester, "value": 2999}
    assert revert_reason(lambda: call.transact(sender)) == "FeeTooLow(sent=2999, required=3000)"


def test_the_callback_prepayment_comes_on_top_of_the_fee(protocol: Protocol) -> None:
    protocol.transact("fee", protocol.coordinator.functions.setMinFeePerSeat(1000), protocol.owner)
    consumer = protocol.deploy_helper("ExampleConsumer", protocol.coordinator.address)
    prepay = 100_000 * CALLBACK_GAS_PRICE
    call = protocol.request_call(quorum=3, callback=consumer.address, callback_gas=100_000)
    sender = {"from": protocol.requester, "value": prepay + 2999}
    assert revert_reason(lambda: call.transact(sender)) == (
        f"FeeTooLow(sent={prepay + 2999}, required={prepay + 3000})"
    )
    basefee = protocol.w3.eth.get_block("latest")["baseFeePerGas"]
    cheap = protocol.request_call(
        quorum=3, callback=consumer.address, callback_gas=100_000, callback_gas_price=0
    )
    reason = revert_reason(lambda: cheap.call({"from": protocol.requester, "value": 10**16}))
    assert reason.startswith("CallbackGasPriceTooLow(price=0, basefee=")
    assert basefee > 0
    receipt = protocol.transact("request", call, protocol.requester, value=prepay + 3000)
    (event,) = protocol.events(receipt, "InferenceRequested")
    assert event["args"]["fee"] == 3000  # the prepayment is not the nodes' fee
    assert event["args"]["terms"]["callbackGasPrice"] == CALLBACK_GAS_PRICE


def request_hash(args: Any, seed: int) -> bytes:
    """The spec's requestHash, from the event's fields."""
    frame_ = args["frame"]
    return keccak(
        abi_encode(
            [
                *("uint256", "address", "bytes32", "bytes32", "uint16", "uint32", "uint8"),
                *("uint32", "uint16", "uint16", "bytes32", "address", "uint32", "uint64"),
                *("uint256", "uint256", "uint16", "uint16", "uint32", "uint32", "uint32"),
            ],
            [
                args["requestId"],
                args["requester"],
                keccak(args["prompt"].encode()),
                keccak(abi_encode(["string[]"], [list(args["acceptedModels"])])),
                args["temperature"],
                args["maxTokens"],
                frame_["quorum"],
                frame_["maxTimeMs"],
                frame_["secDistance"],
                frame_["secPercentage"],
                keccak(frame_["embeddingModel"].encode()),
                args["callback"],
                args["callbackGasLimit"],
                args["terms"]["callbackGasPrice"],
                args["fee"],
                seed,
                args["terms"]["slashBps"],
                args["terms"]["dimBits"],
                args["revealDeadline"] - args["commitDeadline"],
                args["disputeWindow"],
                args["terms"]["expiresAt"] - args["revealDeadline"] - args["disputeWindow"],
            ],
        )
    )


def test_request_event_carries_everything_a_node_needs(protocol: Protocol) -> None:
    call = protocol.request_call(
        prompt="Name a prime.",
        models=[MODEL, "gemma-3-270m"],
        temperature=200,
        max_tokens=32,
        maxTimeMs=4500,
    )
    receipt = protocol.transact("request", call, protocol.requester, value=FEE)
    block = protocol.w3.eth.get_block(receipt["blockNumber"])
    (event,) = protocol.events(receipt, "InferenceRequested")
    args = event["args"]
    assert args["prompt"] == "Name a prime."
    assert args["acceptedModels"] == [MODEL, "gemma-3-270m"]
    assert (args["temperature"], args["maxTokens"], args["fee"]) == (200, 32, FEE)
    assert tuple(args["frame"].values()) == (3, 4500, 3500, 6700, EMBEDDING_MODEL)
    assert args["commitDeadline"] == block["timestamp"] + 5  # ceil(4500 ms)
    assert args["revealDeadline"] == args["commitDeadline"] + REVEAL_WINDOW_S
    assert args["disputeWindow"] == DISPUTE_WINDOW_S
    terms = args["terms"]
    seed = int.from_bytes(block["mixHash"], "big") % 2**48  # prevrandao's low 48 bits
    assert terms["seed"] == seed
    assert terms["requestHash"] == request_hash(args, seed)
    assert terms["expiresAt"] == args["revealDeadline"] + DISPUTE_WINDOW_S + EXPIRY_GRACE_S
    assert (terms["callbackGasPrice"], terms["eligibleCount"], terms["slashBps"]) == (0, 6, 1000)
    stored = protocol.stored_request(args["requestId"])
    assert stored["acceptedModels"] == [MODEL, "gemma-3-270m"]
    assert (stored["seed"], stored["requestHash"]) == (seed, terms["requestHash"])
    assert (stored["createdBlock"], stored["maxTokens"]) == (receipt["blockNumber"], 32)


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
    finalizer = protocol.oracles[5]
    before = {a: protocol.worth(a) for a in [*oracles, finalizer, protocol.requester]}

    receipt = protocol.finalize(rid, bits, ANSWER, sender=finalizer)

    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["output"] == ANSWER
    assert event["args"]["model"] == MODEL
    assert event["args"]["clusterMask"] == 0b111
    assert event["args"]["callbackSucceeded"] is True
    assert event["args"]["rewardPerOracle"] == FEE // 3
    gains = {a: protocol.worth(a) - b for a, b in before.items()}
    assert [gains[o] for o in oracles] == [FEE // 3] * 3
    assert gains[finalizer] == 300_000 * CALLBACK_GAS_PRICE  # the callback's prepayment
    assert gains[protocol.requester] == 0  # FEE is a multiple of 3: nothing left over
    assert consumer.functions.answers(rid).call() == [ANSWER, MODEL, True]
    reason = revert_reason(lambda: protocol.finalize_call(rid, bits, ANSWER).call())
    assert reason == f"RequestClosed(requestId={rid})"
    assert protocol.balance(protocol.coordinator.address) == 6 * STAKE  # only the stakes


def test_outlier_is_left_out_of_the_cluster_and_unpaid(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=4, secPercentage=7500)
    bits = [*honest_bits(rng, 3), random_bits(rng)]
    outputs = [ANSWER, ANSWER, "Paris.", "Bananas are yellow."]
    oracles = protocol.oracles[:4]
    protocol.run_round(rid, list(zip(oracles, outputs, bits, strict=True)))
    protocol.close_disputes(rid)
    before = [protocol.worth(a) for a in [*oracles, protocol.requester]]
    receipt = protocol.finalize(rid, bits, ANSWER)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b0111
    gains = [
        protocol.worth(a) - b for a, b in zip([*oracles, protocol.requester], before, strict=True)
    ]
    # each member earns fee / quorum; what the outlier's seat would have earned goes back
    assert gains == [FEE // 4] * 3 + [0, FEE - 3 * (FEE // 4)]
    assert protocol.events(receipt, "Slashed") == ()  # a revealed outlier is not slashed


def test_no_consensus_fails_and_refunds(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE)
    bits = [random_bits(rng) for _ in range(3)]
    protocol.run_round(rid, [(protocol.oracles[i], f"answer {i}", b) for i, b in enumerate(bits)])
    protocol.close_disputes(rid)
    before = protocol.worth(protocol.requester)
    receipt = protocol.finalize(rid, bits, "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 2  # NoConsensus
    assert protocol.worth(protocol.requester) == before + FEE


def test_missing_reveals_count_against_the_quorum_and_are_slashed(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=3, secPercentage=10_000)
    bits = honest_bits(rng, 3)
    answers = [protocol.commit(protocol.oracles[i], rid, ANSWER, b) for i, b in enumerate(bits)]
    protocol.close_commits(rid)
    for answer in answers[:2]:
        protocol.reveal(answer)
    protocol.close_disputes(rid)  # one seat never reveals: the window runs to the reveal deadline
    silent = protocol.oracles[2]
    receipt = protocol.finalize(rid, [*bits[:2], b""], ANSWER)
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 2
    (slashed,) = protocol.events(receipt, "Slashed")
    assert dict(slashed["args"]) == {
        "requestId": rid,
        "oracle": silent,
        "amount": SLASH,
        "reason": 0,  # committed a seat and never revealed
    }
    assert protocol.stake(silent) == STAKE - SLASH
    assert protocol.coordinator.functions.slashedTotal().call() == SLASH


def test_no_commits_fails_after_the_commit_deadline(protocol: Protocol) -> None:
    rid = protocol.request(fee=FEE, maxTimeMs=2000)
    early = revert_reason(lambda: protocol.finalize_call(rid, [], "").call())
    assert early.startswith(f"FinalizeTooEarly(requestId={rid}")
    protocol.advance(3)
    before = protocol.worth(protocol.requester)
    receipt = protocol.finalize(rid, [], "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 0  # NoCommits
    assert protocol.worth(protocol.requester) == before + FEE


def test_a_request_nobody_can_serve_fails_at_once(chain: Any) -> None:
    p = Protocol.deploy(chain.w3)  # no node registered: commits are closed from the start
    rid = p.request(fee=FEE)
    assert p.stored_request(rid)["eligibleCount"] == 0
    assert p.coordinator.functions.commitsClosed(rid).call() is True
    receipt = p.finalize(rid, [], "")
    (event,) = p.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 0


def test_commits_without_reveals_fail_after_the_reveal_deadline(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE)
    protocol.commit(protocol.oracles[0], rid, ANSWER, random_bits(rng))
    protocol.advance(30 + REVEAL_WINDOW_S + DISPUTE_WINDOW_S + 1)
    receipt = protocol.finalize(rid, [b""], "")
    (event,) = protocol.events(receipt, "InferenceFailed")
    assert event["args"]["reason"] == 1  # NoReveals
    (slashed,) = protocol.events(receipt, "Slashed")
    assert (slashed["args"]["oracle"], slashed["args"]["amount"]) == (protocol.oracles[0], SLASH)


def test_commits_close_early_once_every_eligible_node_has_committed(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    oracles = p.register_oracles(3)
    rid = p.request(fee=FEE, quorum=2)
    assert p.stored_request(rid)["eligibleCount"] == 3
    for i, oracle in enumerate(oracles[:2]):
        p.commit(oracle, rid, ANSWER, random_bits(rng))
        assert p.coordinator.functions.commitsClosed(rid).call() is False
        assert p.stored_request(rid)["commitCount"] == i + 1
    best = sorted(oracles, key=lambda o: p.ticket(rid, o))[:2]
    if oracles[2] in best:
        p.commit(oracles[2], rid, ANSWER, random_bits(rng))
    else:  # its ticket cannot take a seat: the contract says so before it pays
        call = p.raw_commit_call(rid, b"\x01" * 32)
        assert revert_reason(lambda: call.call({"from": oracles[2]})).startswith("TicketTooWeak(")
        return
    assert p.coordinator.functions.commitsClosed(rid).call() is True  # no better ticket can come
    assert p.coordinator.functions.revealOpen(rid).call() is True
    assert sorted(p.seated(rid)) == sorted(best)


def test_the_best_tickets_hold_the_seats_whatever_the_arrival_order(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=2)
    oracles = protocol.oracles[:6]
    tickets = {o: protocol.ticket(rid, o) for o in oracles}
    fn = protocol.coordinator.functions
    for oracle in oracles:
        seated = protocol.seated(rid)
        if len(seated) == 2:
            worst = max(tickets[o] for o in seated)
            if tickets[oracle] >= worst:
                assert call_reverts(protocol.raw_commit_call(rid, b"\x01" * 32), oracle) == (
                    f"TicketTooWeak(requestId={rid}, ticket={tickets[oracle]}, worst={worst})"
                )
                continue
        answer = protocol.answer(oracle, rid, ANSWER, random_bits(rng))
        receipt = protocol.transact("commit", protocol.commit_call(answer), oracle)
        (event,) = protocol.events(receipt, "Committed")
        assert event["args"]["ticket"] == tickets[oracle]
        if len(seated) == 2:  # the worst seat went to the better ticket
            evicted = max(seated, key=lambda o: tickets[o])
            assert event["args"]["evicted"] == evicted
            assert event["args"]["seat"] == seated.index(evicted)
            assert call_reverts(protocol.raw_commit_call(rid, b"\x02" * 32), evicted) == (
                f"AlreadyCommitted(requestId={rid}, oracle={evicted})"
            )
        else:
            assert event["args"]["evicted"] == ZERO
    best = sorted(oracles, key=lambda o: tickets[o])[:2]
    assert sorted(protocol.seated(rid)) == sorted(best)
    for seat_no, oracle in enumerate(protocol.seated(rid)):
        view, _ = fn.getSeat(rid, seat_no).call()
        assert (view[0], view[1], view[3]) == (oracle, tickets[oracle], False)


# --- commit reverts --------------------------------------------------------------------


def test_commit_reverts(protocol: Protocol, rng: random.Random) -> None:
    rid = protocol.request(fee=FEE, quorum=2)
    bits = random_bits(rng)
    stranger = Web3.to_checksum_address(protocol.w3.eth.accounts[9])
    fn = protocol.coordinator.functions
    commit = protocol.raw_commit_call
    assert revert_reason(lambda: commit(rid, b"\x01" * 32).call({"from": stranger})) == (
        f"NotRegistered(oracle={stranger})"
    )
    assert revert_reason(lambda: commit(rid, b"\x00" * 32).call({"from": protocol.oracles[0]})) == (
        "EmptyCommitment()"
    )
    # only the top 248 bits are kept: they must not all be zero either
    assert revert_reason(
        lambda: commit(rid, b"\x00" * 31 + b"\x07").call({"from": protocol.oracles[0]})
    ) == ("EmptyCommitment()")
    assert revert_reason(
        lambda: commit(999, b"\x01" * 32, bytes(32)).call({"from": protocol.oracles[0]})
    ) == ("UnknownRequest(requestId=999)")
    protocol.commit(protocol.oracles[0], rid, ANSWER, bits)
    double = revert_reason(lambda: commit(rid, b"\x01" * 32).call({"from": protocol.oracles[0]}))
    assert double == f"AlreadyCommitted(requestId={rid}, oracle={protocol.oracles[0]})"
    # registered after the request's block: its ticket would be chosen knowing the seed
    late = protocol.fresh_account()
    protocol.transact("register", fn.register(), late, value=STAKE)
    assert revert_reason(lambda: commit(rid, b"\x01" * 32).call({"from": late})) == (
        f"NotEligible(requestId={rid}, oracle={late})"
    )
    # unbonding: no more commits
    protocol.transact("deregister", fn.deregister(), protocol.oracles[1])
    assert revert_reason(lambda: commit(rid, b"\x01" * 32).call({"from": protocol.oracles[1]})) == (
        f"OracleUnbonding(oracle={protocol.oracles[1]})"
    )


def test_a_node_slashed_below_the_stake_floor_cannot_commit(
    protocol: Protocol, rng: random.Random
) -> None:
    fn = protocol.coordinator.functions
    commit = protocol.raw_commit_call
    protocol.transact("slash", fn.setSlashBps(10_000), protocol.owner)
    rid = protocol.request(fee=FEE, quorum=1)
    squatter = protocol.oracles[0]
    protocol.commit(squatter, rid, ANSWER, random_bits(rng))
    protocol.advance(protocol.stored_request(rid)["expiresAt"] - protocol.now() + 1)
    protocol.transact("expire", fn.expire(rid), protocol.requester)
    assert protocol.stake(squatter) == 0  # a 100 % slash
    later = protocol.request(fee=FEE)
    floor = fn.MIN_STAKE_FLOOR().call()
    assert floor == 10**14
    assert revert_reason(lambda: commit(later, b"\x01" * 32).call({"from": squatter})) == (
        f"StakeTooLow(stake=0, required={floor})"
    )


def test_late_commit_reverts(protocol: Protocol) -> None:
    rid = protocol.request(fee=FEE, maxTimeMs=1000)
    protocol.advance(2)
    call = protocol.raw_commit_call(rid, b"\x01" * 32)
    assert revert_reason(lambda: call.call({"from": protocol.oracles[0]})).startswith(
        f"CommitPhaseOver(requestId={rid}"
    )


# --- reveal reverts --------------------------------------------------------------------


def test_reveal_waits_for_commits_to_close(protocol: Protocol, rng: random.Random) -> None:
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
    protocol.close_commits(rid)
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
    other_request = fn.reveal(rid + 1, ANSWER, 0, answer.bits, answer.salt)
    assert (
        revert_reason(lambda: other_request.call(sender)) == f"UnknownRequest(requestId={rid + 1})"
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


def seat_tickets(protocol: Protocol, rid: int) -> list[int]:
    count = protocol.stored_request(rid)["seatCount"]
    return [protocol.coordinator.functions.getSeat(rid, i).call()[0][1] for i in range(count)]


def test_a_strict_majority_of_the_quorum_excludes_a_reveal_and_slashes_it(
    protocol: Protocol, rng: random.Random
) -> None:
    rid = protocol.request(fee=FEE, quorum=3, secPercentage=6600)
    bits = honest_bits(rng, 3)
    oracles = protocol.oracles[:3]
    protocol.run_round(rid, list(zip(oracles, [ANSWER] * 3, bits, strict=True)))
    liar = oracles[0]
    stale = protocol.dispute_call(rid, liar, request_hash=b"\x01" * 32)  # another request's
    assert revert_reason(lambda: stale.call({"from": oracles[1]})) == (
        f"StaleRequest(requestId={rid})"
    )
    protocol.dispute(oracles[1], rid, liar)
    again = protocol.dispute_call(rid, liar)
    assert revert_reason(lambda: again.call({"from": oracles[1]})) == (
        f"AlreadyDisputed(requestId={rid}, accused={liar}, disputer={oracles[1]})"
    )
    assert revert_reason(lambda: again.call({"from": liar})) == "SelfDispute()"
    outsider = {"from": protocol.oracles[4]}
    assert revert_reason(lambda: again.call(outsider)) == (
        f"NotARevealer(requestId={rid}, oracle={protocol.oracles[4]})"
    )
    protocol.dispute(oracles[2], rid, liar)  # 2 of a quorum of 3: 2 * 2 > 3
    (view, _) = protocol.coordinator.functions.getSeat(rid, 0).call()
    assert view[4] == 0b110  # disputedBy seats 1 and 2
    protocol.close_disputes(rid)
    late = revert_reason(lambda: protocol.dispute_call(rid, oracles[1]).call({"from": liar}))
    assert late.startswith(f"DisputeWindowClosed(requestId={rid}")
    before = [protocol.worth(a) for a in [*oracles, protocol.requester]]
    receipt = protocol.finalize(rid, bits, ANSWER)
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b110
    # seats 1 and 2 tie on neighbours and on distance: the smaller ticket is the medoid
    tickets = seat_tickets(protocol, rid)
    assert event["args"]["winnerSeat"] == (1 if tickets[1] < tickets[2] else 2)
    gains = [
        protocol.worth(a) - b for a, b in zip([*oracles, protocol.requester], before, strict=True)
    ]
    assert gains == [0, FEE // 3, FEE // 3, FEE - 2 * (FEE // 3)]
    (slashed,) = protocol.events(receipt, "Slashed")
    assert (slashed["args"]["oracle"], slashed["args"]["amount"]) == (liar, SLASH)
    assert slashed["args"]["reason"] == 1  # excluded by disputes
    assert protocol.stake(liar) == STAKE - SLASH


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
    assert protocol.events(receipt, "Slashed") == ()


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
    # two neighbours: equal sums, so the smaller ticket's reveal is delivered
    tickets = seat_tickets(protocol, rid)
    winner = 0 if tickets[0] < tickets[1] else 1
    wrong = "Paris" if winner == 0 else ANSWER
    assert revert_reason(lambda: protocol.finalize_call(rid, bits, wrong).call()) == (
        f"WinnerOutputMismatch(requestId={rid}, winnerSeat={winner})"
    )
    receipt = protocol.finalize(rid, bits, [ANSWER, "Paris"][winner])
    (event,) = protocol.events(receipt, "InferenceFinalized")
    assert event["args"]["winnerSeat"] == winner


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
    # the fee and the prepayment went out exactly once: only the stakes are left, nothing owed
    assert protocol.balance(protocol.coordinator.address) == 6 * STAKE
    assert protocol.coordinator.functions.withdrawable(consumer.address).call() == 0
    assert protocol.stored_request(rid)["status"] == 2  # Finalized


def test_payment_to_a_payee_that_refuses_is_deferred(
    protocol: Protocol, rng: random.Random
) -> None:
    payee = protocol.deploy_helper("RejectingPayee", protocol.coordinator.address)
    protocol.transact("register", payee.functions.register(), protocol.owner, value=STAKE)
    rid = protocol.request(fee=FEE, quorum=1)
    answer = protocol.answer(payee.address, rid, ANSWER, random_bits(rng))
    protocol.transact(
        "commit",
        payee.functions.commit(rid, answer.request_hash, Protocol.commitment(answer)),
        protocol.owner,
    )
    protocol.close_commits(rid)
    reveal = payee.functions.reveal(rid, ANSWER, 0, answer.bits, answer.salt)
    protocol.transact("reveal", reveal, protocol.owner)
    protocol.revealed[(rid, payee.address)] = answer
    protocol.close_disputes(rid)
    receipt = protocol.finalize(rid, [answer.bits], ANSWER)
    (deferred,) = protocol.events(receipt, "PaymentDeferred")
    assert deferred["args"]["payee"] == payee.address
    assert protocol.coordinator.functions.withdrawable(payee.address).call() == FEE
    # withdraw() would pay the payee, which refuses again; withdrawTo names another account
    refused = payee.functions.withdrawTo(payee.address)
    assert revert_reason(lambda: refused.call({"from": protocol.owner})) == "TransferFailed()"
    to = protocol.fresh_account(balance=0)
    protocol.transact("withdrawTo", payee.functions.withdrawTo(to), protocol.owner)
    assert protocol.balance(to) == FEE
    assert protocol.coordinator.functions.withdrawable(payee.address).call() == 0


def test_the_binding_asks_the_dispute_deadline_once_per_state_it_is_told(
    protocol: Protocol, rng: random.Random
) -> None:
    binding = CoordinatorBinding(protocol.w3, protocol.coordinator.address)
    rid = protocol.request(fee=FEE, quorum=2)
    first, second = (
        protocol.commit(protocol.oracles[i], rid, ANSWER, b)
        for i, b in enumerate(honest_bits(rng, 2))
    )
    protocol.close_commits(rid)
    protocol.reveal(first)
    one_revealed = binding.dispute_deadline(rid, as_of="one revealed")
    protocol.advance(3)
    protocol.reveal(second)  # all in: disputes now close a window after this reveal
    both_revealed = binding.dispute_deadline(rid)
    assert both_revealed < one_revealed  # before, the window ran from the reveal deadline
    assert binding.dispute_deadline(rid, as_of="one revealed") == one_revealed  # remembered
    assert binding.dispute_deadline(rid, as_of="both revealed") == both_revealed  # asked
