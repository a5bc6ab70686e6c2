"""The attacks of issue 8, run as an attacker would on anvil: each asserts the honest outcome
and where every wei of stake and fee went."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from eth_account import Account
from eth_typing import ChecksumAddress

from oracle.chain.anvil import dev_private_key
from tests.support.protocol import (
    CALLBACK_GAS_PRICE,
    DIM_BYTES,
    MODEL,
    STAKE,
    Protocol,
    call_reverts,
    random_bits,
)

FEE = 6 * 10**15  # divisible by 2, 3, 4, 5 and 6: the remainder checks below are exact
PARIS = "The capital of France is Paris."
LYON = "The capital of France is Lyon."
SLASH = STAKE * 1000 // 10_000  # the default slashBps, 10 %
DIM_BITS = DIM_BYTES * 8


@pytest.fixture
def rng() -> random.Random:
    return random.Random(8)


def flipped(base: bytes, positions: Sequence[int]) -> bytes:
    value = int.from_bytes(base, "big")
    for position in positions:
        value ^= 1 << position
    return value.to_bytes(len(base), "big")


def spread(base: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Copies of ``base``, the i-th with ``sizes[i]`` bits flipped, no bit flipped twice:
    copies i and j lie sizes[i] + sizes[j] apart."""
    out, start = [], 0
    for size in sizes:
        out.append(flipped(base, range(start, start + size)))
        start += size
    return out


def gains(p: Protocol, before: dict[str, int]) -> dict[str, int]:
    return {address: p.worth(address) - worth for address, worth in before.items()}


def snapshot(p: Protocol, addresses: Sequence[str]) -> dict[str, int]:
    return {address: p.worth(address) for address in addresses}


def register(p: Protocol, accounts: Sequence[ChecksumAddress], stake: int) -> None:
    for account in accounts:
        p.transact("register", p.coordinator.functions.register(), account, value=stake)


# --- seats follow stake, not speed -----------------------------------------------------


def test_sybil_addresses_committing_first_do_not_hold_the_seats(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    honest = p.register_oracles(5, stake=100 * STAKE)
    sybils = [p.fresh_account() for _ in range(5)]
    register(p, sybils, STAKE)  # the operator's stake, split over quorum addresses
    rid = p.request(fee=FEE, quorum=5, secPercentage=6000)
    late = [p.fresh_account() for _ in range(5)]
    register(p, late, STAKE)  # fresh addresses chosen once the seed is known
    for account in late:
        assert call_reverts(p.raw_commit_call(rid, b"\x01" * 32), account) == (
            f"NotEligible(requestId={rid}, oracle={account})"
        )

    base = random_bits(rng)
    lie = flipped(base, range(200, 330))  # an unrelated answer, far from the honest ones
    sybil_answers = [p.commit(s, rid, LYON, lie) for s in sybils]  # first, with no inference
    assert p.seated(rid) == sybils  # for now the operator holds every seat
    tickets = {a: p.ticket(rid, a) for a in [*honest, *sybils]}
    honest_bits = spread(base, [6, 7, 8, 9, 10])
    honest_answers = []
    for node, bits in zip(honest, honest_bits, strict=True):
        worst = max(tickets[a] for a in p.seated(rid))
        if tickets[node] >= worst:
            assert call_reverts(p.raw_commit_call(rid, b"\x01" * 32), node) == (
                f"TicketTooWeak(requestId={rid}, ticket={tickets[node]}, worst={worst})"
            )
            continue
        honest_answers.append(p.commit(node, rid, PARIS, bits))
    best = sorted(tickets, key=lambda a: tickets[a])[:5]
    seated = p.seated(rid)
    assert sorted(seated) == sorted(best)  # the best tickets, whatever the arrival order
    # with 1 % of the stake the operator keeps (almost surely) not one seat of five
    assert len([a for a in seated if a in sybils]) <= 2

    p.close_commits(rid)
    for answer in [*sybil_answers, *honest_answers]:
        if answer.oracle in seated:
            p.reveal(answer)
    p.close_disputes(rid)
    everyone = [*honest, *sybils, p.requester]
    before = snapshot(p, everyone)
    receipt = p.finalize(rid, p.seat_bits(rid), PARIS)
    (event,) = p.events(receipt, "InferenceFinalized")
    assert event["args"]["output"] == PARIS
    paid = [a for a in seated if a in honest]
    assert gains(p, before) == {
        **{a: FEE // 5 if a in paid else 0 for a in [*honest, *sybils]},
        p.requester: FEE - len(paid) * (FEE // 5),
    }
    for sybil in sybils:  # evicted before commits closed: nothing lost but gas
        assert p.stake(sybil) == STAKE


# --- stake at risk ---------------------------------------------------------------------


def test_a_squatter_that_never_reveals_is_slashed_and_its_stake_stays_locked(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(3)
    squatter, honest = nodes[0], nodes[1:]
    fn = p.coordinator.functions
    rid = p.request(fee=FEE, quorum=3, secPercentage=6600)
    expires_at = p.stored_request(rid)["expiresAt"]
    p.commit(squatter, rid, PARIS, random_bits(rng))
    # leaving does not take the stake out of reach: it stays until the request expires,
    # and an unbonding period after that
    p.transact("deregister", fn.deregister(), squatter)
    state = p.oracle_state(squatter)
    assert state["lockedUntil"] == expires_at
    assert state["unbondingEndsAt"] == expires_at + 86_400
    bits = spread(random_bits(rng), [5, 9])
    answers = [p.commit(node, rid, PARIS, b) for node, b in zip(honest, bits, strict=True)]
    assert p.coordinator.functions.commitsClosed(rid).call() is True  # all three eligible in
    for answer in answers:
        p.reveal(answer)
    p.close_disputes(rid)
    before = snapshot(p, [*nodes, p.requester])

    receipt = p.finalize(rid, [b"", *bits], PARIS)

    (slashed,) = p.events(receipt, "Slashed")
    assert dict(slashed["args"]) == {
        "requestId": rid,
        "oracle": squatter,
        "amount": SLASH,
        "reason": 0,
    }
    assert gains(p, before) == {
        squatter: 0,
        honest[0]: FEE // 3,
        honest[1]: FEE // 3,
        p.requester: FEE - 2 * (FEE // 3),  # the squatted seat's share goes back
    }
    assert p.stake(squatter) == STAKE - SLASH
    assert fn.slashedTotal().call() == SLASH
    # burnt: the slashed wei stay in the contract, which holds the stakes and nothing else
    assert p.balance(p.coordinator.address) == 3 * STAKE
    assert call_reverts(fn.withdrawStake(), squatter) == (
        f"StillUnbonding(oracle={squatter}, unbondingEndsAt={expires_at + 86_400})"
    )
    p.advance(expires_at + 86_400 - p.now())
    before = snapshot(p, [squatter])
    p.transact("withdrawStake", fn.withdrawStake(), squatter)
    assert gains(p, before) == {squatter: STAKE - SLASH}
    assert p.balance(p.coordinator.address) == 2 * STAKE + SLASH


def test_squatting_every_seat_costs_every_squatter_and_refunds_the_requester(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    squatters = p.register_oracles(3)
    rid = p.request(fee=FEE, quorum=3)
    for squatter in squatters:
        p.commit(squatter, rid, PARIS, random_bits(rng))
    p.close_disputes(rid)  # no reveal: the window runs from the reveal deadline
    before = snapshot(p, [*squatters, p.requester])
    receipt = p.finalize(rid, [b""] * 3, "")
    (failed,) = p.events(receipt, "InferenceFailed")
    assert failed["args"]["reason"] == 1  # NoReveals
    slashes = {e["args"]["oracle"]: e["args"]["amount"] for e in p.events(receipt, "Slashed")}
    assert slashes == dict.fromkeys(squatters, SLASH)
    assert gains(p, before) == {**dict.fromkeys(squatters, 0), p.requester: FEE}
    assert p.coordinator.functions.slashedTotal().call() == 3 * SLASH


# --- disputes cannot be profitable -----------------------------------------------------


def test_at_quorum_two_one_node_cannot_exclude_the_other(chain: Any, rng: random.Random) -> None:
    p = Protocol.deploy(chain.w3)
    a, b = p.register_oracles(2)
    rid = p.request(fee=FEE, quorum=2, secPercentage=10_000)
    bits = spread(random_bits(rng), [4, 6])
    p.run_round(rid, [(a, PARIS, bits[0]), (b, PARIS, bits[1])])
    p.dispute(a, rid, b)  # 1 of 2 is no strict majority of the quorum
    p.close_disputes(rid)
    before = snapshot(p, [a, b, p.requester])
    receipt = p.finalize(rid, bits, PARIS)
    (event,) = p.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b11
    assert gains(p, before) == {a: FEE // 2, b: FEE // 2, p.requester: 0}
    assert p.events(receipt, "Slashed") == ()


def test_two_liars_cannot_exclude_two_honest_nodes_at_quorum_four(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(4)
    liars, honest = nodes[:2], nodes[2:]
    rid = p.request(fee=FEE, quorum=4, secPercentage=5000)
    base = random_bits(rng)
    honest_bits = spread(base, [5, 7])  # 12 bits apart
    lie = flipped(base, range(150, 300))  # 150 bits and more from the honest answers
    liar_bits = spread(lie, [30, 30])  # 60 bits apart: a looser cluster of two
    outputs = [LYON, LYON, PARIS, PARIS]
    bits = [*liar_bits, *honest_bits]
    p.run_round(rid, list(zip(nodes, outputs, bits, strict=True)))
    for liar in liars:
        for node in honest:
            p.dispute(liar, rid, node)  # 2 disputes each: 2 * 2 is not more than 4
    p.close_disputes(rid)
    before = snapshot(p, [*nodes, p.requester])
    receipt = p.finalize(rid, bits, PARIS)
    (event,) = p.events(receipt, "InferenceFinalized")
    # two clusters of two: the tighter one's medoid is delivered; nobody was excluded
    assert (event["args"]["output"], event["args"]["clusterMask"]) == (PARIS, 0b1100)
    assert gains(p, before) == {
        liars[0]: 0,
        liars[1]: 0,
        honest[0]: FEE // 4,
        honest[1]: FEE // 4,
        p.requester: FEE - 2 * (FEE // 4),
    }
    assert p.events(receipt, "Slashed") == ()


def test_excluding_members_of_a_unanimous_cluster_does_not_raise_the_excluders_reward(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(5)
    excluders, victims = nodes[:3], nodes[3:]
    rid = p.request(fee=FEE, quorum=5, secPercentage=6000)
    bits = spread(random_bits(rng), [4, 5, 6, 7, 8])
    p.run_round(rid, list(zip(nodes, [PARIS] * 5, bits, strict=True)))
    for excluder in excluders:
        for victim in victims:
            p.dispute(excluder, rid, victim)  # 3 of a quorum of 5: a strict majority
    p.close_disputes(rid)
    before = snapshot(p, [*nodes, p.requester])
    receipt = p.finalize(rid, bits, PARIS)
    (event,) = p.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b00111
    assert event["args"]["rewardPerOracle"] == FEE // 5  # not FEE // 3
    assert gains(p, before) == {
        **dict.fromkeys(excluders, FEE // 5),
        **dict.fromkeys(victims, 0),
        p.requester: FEE - 3 * (FEE // 5),
    }
    slashes = {
        e["args"]["oracle"]: (e["args"]["amount"], e["args"]["reason"])
        for e in p.events(receipt, "Slashed")
    }
    assert slashes == dict.fromkeys(victims, (SLASH, 1))
    # the slashed stake went to nobody: it stays in the contract, burnt
    assert p.balance(p.coordinator.address) == 5 * STAKE
    assert p.coordinator.functions.slashedTotal().call() == 2 * SLASH


# --- the delivered answer is the cluster's centre --------------------------------------


def test_an_in_cluster_lie_from_the_first_seat_is_not_delivered(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(5)
    liar, honest = nodes[0], nodes[1:]
    rid = p.request(fee=FEE, quorum=5, secPercentage=6000)
    base = random_bits(rng)
    honest_bits = spread(base, [8, 10, 12, 14])
    # 100 more bits flipped: 108-114 from each honest answer, inside secDistance (134 of 384)
    lie_bits = flipped(base, range(200, 300))
    rows = [(liar, LYON, lie_bits)]
    for i, (node, b) in enumerate(zip(honest, honest_bits, strict=True)):
        rows.append((node, f"{PARIS} ({i})", b))
    p.run_round(rid, rows)  # the liar committed first: it holds seat 0
    assert p.seated(rid)[0] == liar
    p.close_disputes(rid)
    seat_bits = [lie_bits, *honest_bits]
    assert call_reverts(p.finalize_call(rid, seat_bits, LYON), p.owner) == (
        f"WinnerOutputMismatch(requestId={rid}, winnerSeat=1)"
    )
    before = snapshot(p, [*nodes, p.requester])
    receipt = p.finalize(rid, seat_bits, f"{PARIS} (0)")
    (event,) = p.events(receipt, "InferenceFinalized")
    # everyone is a neighbour of everyone; the smallest sum of distances is seat 1's (168
    # bits; the liar's is 444)
    assert event["args"]["clusterMask"] == 0b11111
    assert (event["args"]["winnerSeat"], event["args"]["output"]) == (1, f"{PARIS} (0)")
    assert gains(p, before) == {**dict.fromkeys(nodes, FEE // 5), p.requester: 0}


def test_an_output_longer_than_max_tokens_allow_cannot_be_revealed(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    node, other = p.register_oracles(2)
    rid = p.request(fee=FEE, quorum=2, max_tokens=2)  # at most 2 * 64 bytes
    payload = PARIS + " " + "x" * (128 - len(PARIS))  # an honest opening, then a tail
    assert len(payload.encode()) == 129
    long_answer = p.commit(node, rid, payload, random_bits(rng))
    fitting = p.commit(other, rid, "y" * 128, random_bits(rng))
    assert call_reverts(p.reveal_call(long_answer), node) == "OutputTooLong(length=129, max=128)"
    p.reveal(fitting)


# --- parameters are fixed per request --------------------------------------------------


def test_changing_windows_and_slash_rate_leaves_open_requests_as_they_were(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(3)
    fn = p.coordinator.functions
    rid = p.request(fee=FEE, quorum=3, secPercentage=6600)
    terms_before = p.stored_request(rid)
    p.transact("windows", fn.setWindows(86_400, 86_400), p.owner)
    p.transact("grace", fn.setExpiryGrace(86_400), p.owner)
    p.transact("slash", fn.setSlashBps(10_000), p.owner)
    assert p.stored_request(rid) == terms_before  # its deadlines, windows and slash rate
    bits = spread(random_bits(rng), [5, 9])
    p.commit(nodes[0], rid, PARIS, random_bits(rng))  # never reveals
    answers = [p.commit(n, rid, PARIS, b) for n, b in zip(nodes[1:], bits, strict=True)]
    for answer in answers:
        p.reveal(answer)
    closes_at = fn.disputeDeadline(rid).call()
    assert closes_at == terms_before["revealDeadline"] + 10  # the window it was made with
    p.close_disputes(rid)
    receipt = p.finalize(rid, [b"", *bits], PARIS)
    (slashed,) = p.events(receipt, "Slashed")
    assert slashed["args"]["amount"] == SLASH  # 10 %, not the new 100 %
    later = p.request(fee=FEE)
    stored = p.stored_request(later)
    assert (stored["disputeWindow"], stored["slashBps"]) == (86_400, 10_000)
    assert stored["revealDeadline"] - stored["commitDeadline"] == 86_400


# --- the finalizer never pays for the consumer -----------------------------------------


def test_a_gas_burning_callback_is_paid_for_by_its_requester(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    node = p.register_oracles(1)[0]
    finalizer = p.oracles[5]
    burner = p.deploy_helper("GasHungryConsumer")
    fn = p.coordinator.functions
    prepay = 2_000_000 * CALLBACK_GAS_PRICE
    free_call = p.request_call(quorum=1, callback=burner.address, callback_gas=2_000_000)
    assert call_reverts(free_call, p.requester, value=prepay) == (
        f"FeeTooLow(sent={prepay}, required={prepay + 10**12})"  # a fee of 0 is refused
    )
    assert fn.minFeePerSeat().call() == 10**12
    rid = p.request(fee=FEE, quorum=1, callback=burner.address, callback_gas=2_000_000)
    bits = random_bits(rng)
    p.run_round(rid, [(node, PARIS, bits)])
    p.close_disputes(rid)
    before = snapshot(p, [node, finalizer, p.requester])
    receipt = p.finalize(rid, [bits], PARIS, sender=finalizer, gas=3_000_000)
    (event,) = p.events(receipt, "InferenceFinalized")
    assert event["args"]["callbackSucceeded"] is False  # it burnt all it was given
    assert gains(p, before) == {node: FEE, finalizer: prepay, p.requester: 0}
    # the prepayment covers the callback's gas at what the finalizer paid for it
    assert receipt["effectiveGasPrice"] <= CALLBACK_GAS_PRICE
    assert receipt["gasUsed"] - 2_000_000 < 200_000


def test_a_callback_address_without_code_is_refused(chain: Any) -> None:
    p = Protocol.deploy(chain.w3)
    p.register_oracles(1)
    nobody = p.fresh_account()
    call = p.request_call(quorum=1, callback=nobody, callback_gas=100_000)
    assert call_reverts(call, p.requester, value=FEE + 100_000 * CALLBACK_GAS_PRICE) == (
        f"NoCodeAtCallback(callback={nobody})"
    )


# --- the commitment binds the request's content ----------------------------------------


def test_a_reordered_request_does_not_carry_a_commitment_to_another_prompt(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    node = p.register_oracles(1)[0]
    before_reorg = chain.rpc("evm_snapshot")
    rid_a = p.request(fee=FEE, quorum=1, prompt="What is the capital of France?")
    answer_a = p.answer(node, rid_a, PARIS, random_bits(rng))  # made for prompt A
    assert chain.rpc("evm_revert", before_reorg) is True  # the reorg drops it...
    rid_b = p.request(fee=FEE, quorum=1, prompt="Write a poem about Lyon.")  # ...B takes its id
    assert rid_b == rid_a
    assert p.request_hash(rid_b) != answer_a.request_hash
    # the commit names the request it was made for: B refuses it before anything else
    assert call_reverts(p.commit_call(answer_a), node) == f"StaleRequest(requestId={rid_b})"
    # and a commitment to A's hash passed under B's hash still cannot be revealed
    forged = p.raw_commit_call(rid_b, Protocol.commitment(answer_a))
    p.transact("commit", forged, node)
    assert call_reverts(p.reveal_call(answer_a), node) == (
        f"CommitmentMismatch(requestId={rid_b}, oracle={node})"
    )


@pytest.mark.parametrize("bit", [0, 23, 47])
def test_a_commit_naming_a_hash_off_by_one_checked_bit_is_refused(
    chain: Any, rng: random.Random, bit: int
) -> None:
    """commit checks the named hash's low 48 bits against a tag stored beside the seed
    (the whole hash would cost another slot read): one flipped bit there is refused."""
    p = Protocol.deploy(chain.w3)
    node = p.register_oracles(1)[0]
    rid = p.request(fee=FEE, quorum=1)
    answer = p.answer(node, rid, PARIS, random_bits(rng))
    named = (int.from_bytes(answer.request_hash, "big") ^ (1 << bit)).to_bytes(32, "big")
    call = p.raw_commit_call(rid, Protocol.commitment(answer), request_hash=named)
    assert call_reverts(call, node) == f"StaleRequest(requestId={rid})"
    p.transact("commit", p.commit_call(answer), node)  # the hash it was made for: seated
    assert p.seated(rid) == [node]


@pytest.mark.parametrize(
    "remined",
    [
        "another request",
        "the same request in a later block",
        "the same request in its block, after the owner changed the terms",
    ],
)
def test_a_commit_mined_again_after_a_reorg_takes_no_seat_and_costs_no_stake(
    chain: Any, rng: random.Random, remined: str
) -> None:
    """A reorg drops request A and a node's commit to it; the id goes to another request,
    or to A again with another seed (another block's prevrandao), or to A again with the
    same seed (a block at the same height on the same parent) but the owner's new slash
    rate ahead of it. The old commit transaction, mined again from a mempool, is refused:
    it takes no seat, evicts nobody, locks no stake, and the node is not slashed for a
    seat it could never reveal."""
    p = Protocol.deploy(chain.w3)
    stale_node, honest = p.register_oracles(2)
    before_reorg = chain.rpc("evm_snapshot")
    prompt_a = "What is the capital of France?"
    rid_a = p.request(fee=FEE, quorum=2, prompt=prompt_a)
    stale = p.answer(stale_node, rid_a, PARIS, random_bits(rng))  # its commit, in a mempool
    stale_seed = p.terms[rid_a]["seed"]
    assert chain.rpc("evm_revert", before_reorg) is True
    if remined == "another request":
        rid_b = p.request(fee=FEE, quorum=2, prompt="Write a poem about Lyon.")
    elif remined == "the same request in a later block":
        chain.rpc("anvil_mine", "0x1")
        rid_b = p.request(fee=FEE, quorum=2, prompt=prompt_a)
    else:
        fn = p.coordinator.functions
        chain.rpc("evm_setAutomine", False)
        try:  # one block: the owner's changes, then the request
            fn.setSlashBps(2000).transact({"from": p.owner})
            sent = p.request_call(quorum=2, prompt=prompt_a).transact(
                {"from": p.requester, "value": FEE}
            )
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", True)
        rid_b = p.record_request(chain.w3.eth.get_transaction_receipt(sent))
        assert p.terms[rid_b]["seed"] == stale_seed  # the same prevrandao: only the terms differ
    assert rid_b == rid_a and p.request_hash(rid_b) != stale.request_hash
    bits = random_bits(rng)
    honest_answer = p.commit(honest, rid_b, PARIS, bits)
    locked_before = p.oracle_state(stale_node)["lockedUntil"]

    call = p.commit_call(stale)
    assert call_reverts(call, stale_node) == f"StaleRequest(requestId={rid_b})"
    receipt = p.w3.eth.wait_for_transaction_receipt(
        call.transact({"from": stale_node, "gas": 500_000})  # mined as it is, no estimate
    )
    assert receipt["status"] == 0
    assert p.seated(rid_b) == [honest]
    assert p.stored_request(rid_b)["commitCount"] == 1
    assert p.oracle_state(stale_node)["lockedUntil"] == locked_before

    # the refusal costs the node nothing: it may still commit an answer made for B
    fresh = p.commit(stale_node, rid_b, PARIS, bits)
    assert sorted(p.seated(rid_b)) == sorted([honest, stale_node])
    p.close_commits(rid_b)
    p.reveal(honest_answer)
    p.reveal(fresh)
    p.close_disputes(rid_b)
    receipt = p.finalize(rid_b, p.seat_bits(rid_b), PARIS)
    assert p.events(receipt, "Slashed") == ()
    assert p.events(receipt, "InferenceFinalized")
    assert p.stake(stale_node) == p.stake(honest) == STAKE


# --- expiry ----------------------------------------------------------------------------


def test_an_expired_request_is_settled_by_anyone_with_refund_and_slashes(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    nodes = p.register_oracles(3)
    consumer = p.deploy_helper("ExampleConsumer", p.coordinator.address)
    fn = p.coordinator.functions
    prepay = 200_000 * CALLBACK_GAS_PRICE
    rid = p.request(fee=FEE, quorum=3, callback=consumer.address, callback_gas=200_000)
    bits = spread(random_bits(rng), [3, 4, 5])
    answers = [p.commit(n, rid, PARIS, b) for n, b in zip(nodes, bits, strict=True)]
    for answer in answers[:2]:
        p.reveal(answer)  # the third never reveals, and nobody finalizes
    expires_at = p.stored_request(rid)["expiresAt"]
    p.advance(expires_at - p.now() - 1)
    stranger = p.fresh_account()
    assert call_reverts(fn.expire(rid), stranger) == (
        f"NotExpired(requestId={rid}, expiresAt={expires_at})"
    )
    p.advance(2)
    assert call_reverts(p.finalize_call(rid, bits, PARIS), nodes[0]) == (
        f"RequestExpired(requestId={rid}, expiresAt={expires_at})"
    )
    before = snapshot(p, [*nodes, stranger, p.requester])
    receipt = p.transact("expire", fn.expire(rid), stranger)
    (failed,) = p.events(receipt, "InferenceFailed")
    assert failed["args"]["reason"] == 3  # Expired
    (slashed,) = p.events(receipt, "Slashed")
    assert (slashed["args"]["oracle"], slashed["args"]["amount"]) == (nodes[2], SLASH)
    assert gains(p, before) == {
        **dict.fromkeys(nodes, 0),
        stranger: 0,
        p.requester: FEE + prepay,
    }
    assert p.balance(p.coordinator.address) == 3 * STAKE
    assert call_reverts(fn.expire(rid), stranger) == f"RequestClosed(requestId={rid})"


# --- the owner -------------------------------------------------------------------------


def test_ownership_moves_in_two_steps(chain: Any) -> None:
    p = Protocol.deploy(chain.w3)
    fn = p.coordinator.functions
    new_owner, intruder = p.oracles[0], p.oracles[1]
    assert call_reverts(fn.transferOwnership(intruder), intruder) == "NotOwner()"
    receipt = p.transact("transfer", fn.transferOwnership(new_owner), p.owner)
    (started,) = p.events(receipt, "OwnershipTransferStarted")
    assert (started["args"]["previousOwner"], started["args"]["newOwner"]) == (p.owner, new_owner)
    assert fn.owner().call() == p.owner  # nothing moves until the new owner accepts
    assert call_reverts(fn.setSlashBps(0), new_owner) == "NotOwner()"
    assert call_reverts(fn.acceptOwnership(), intruder) == f"NotPendingOwner(caller={intruder})"
    receipt = p.transact("accept", fn.acceptOwnership(), new_owner)
    (moved,) = p.events(receipt, "OwnershipTransferred")
    assert (moved["args"]["previousOwner"], moved["args"]["newOwner"]) == (p.owner, new_owner)
    assert (fn.owner().call(), fn.pendingOwner().call()) == (new_owner, "0x" + "0" * 40)
    assert call_reverts(fn.setSlashBps(0), p.owner) == "NotOwner()"
    p.transact("slash", fn.setSlashBps(0), new_owner)


@pytest.mark.parametrize("dim_bits", [7, 12, 4097, 4104, 65_528])
def test_embedding_models_take_only_bit_counts_a_reveal_can_have(chain: Any, dim_bits: int) -> None:
    p = Protocol.deploy(chain.w3)
    call = p.coordinator.functions.setEmbeddingModel("e5-small", dim_bits)
    assert call_reverts(call, p.owner) == f"InvalidDimBits(dimBits={dim_bits})"


def test_embedding_models_can_be_set_within_bounds_and_removed(chain: Any) -> None:
    p = Protocol.deploy(chain.w3)
    fn = p.coordinator.functions
    for dim_bits in (8, 4096):
        p.transact("model", fn.setEmbeddingModel("e5-small", dim_bits), p.owner)
        assert fn.embeddingDimBits(p.w3.keccak(text="e5-small")).call() == dim_bits
    assert call_reverts(fn.setEmbeddingModel("", 8), p.owner) == "EmptyEmbeddingModelName()"
    p.transact("model", fn.setEmbeddingModel("e5-small", 0), p.owner)  # removed
    call = p.request_call(embeddingModel="e5-small")
    assert call_reverts(call, p.requester, value=FEE) == (
        "UnknownEmbeddingModel(embeddingModel=e5-small)"
    )


# --- the example consumer --------------------------------------------------------------


def test_the_example_consumer_keeps_its_own_requests_and_refunds(
    chain: Any, rng: random.Random
) -> None:
    p = Protocol.deploy(chain.w3)
    node = p.register_oracles(1)[0]
    consumer = p.deploy_helper("ExampleConsumer", p.coordinator.address)  # owned by p.owner
    cfn = consumer.functions
    frame_ = (1, 2000, 3500, 6700, "all-MiniLM-L6-v2")
    prepay = 200_000 * CALLBACK_GAS_PRICE
    ask = cfn.ask("Capital of France?", [MODEL], 700, 64, frame_, 200_000, CALLBACK_GAS_PRICE)
    intruder = p.oracles[3]
    assert call_reverts(ask, intruder, FEE + prepay, "ExampleConsumer") == "OnlyOwner()"
    receipt = p.transact("ask", ask, p.owner, value=FEE + prepay)
    asked = p.record_request(receipt)
    assert (cfn.asked(asked).call(), cfn.lastRequestId().call()) == (True, asked)

    # someone else names the consumer as the callback of their own request: it is answered
    # under its own id, and overwrites nothing of the consumer's
    other = p.request(fee=FEE, quorum=1, callback=consumer.address, callback_gas=200_000)
    bits = random_bits(rng)
    p.run_round(other, [(node, LYON, bits)])
    p.close_disputes(other)
    p.finalize(other, [bits], LYON)
    assert cfn.answers(other).call() == [LYON, MODEL, True]
    assert cfn.asked(other).call() is False
    assert cfn.lastRequestId().call() == asked
    assert cfn.answers(asked).call() == ["", "", False]

    # the consumer's own request gets no answer: fee and prepayment come back to it
    p.advance(p.stored_request(asked)["expiresAt"] - p.now() + 1)
    p.transact("expire", p.coordinator.functions.expire(asked), intruder)
    assert p.balance(consumer.address) == FEE + prepay
    payee = p.fresh_account(balance=0)
    assert call_reverts(cfn.withdraw(intruder), intruder, 0, "ExampleConsumer") == "OnlyOwner()"
    p.transact("withdraw", cfn.withdraw(payee), p.owner)
    assert (p.balance(payee), p.balance(consumer.address)) == (FEE + prepay, 0)


def test_a_dispute_mined_again_after_a_reorg_gave_the_id_to_another_request_is_refused(
    chain: Any, rng: random.Random
) -> None:
    """On the orphaned chain two nodes disputed a third's reveal of request 1. On the new
    chain id 1 is another request where all three answer alike; the old signed disputes,
    broadcast again by anyone, would exclude and slash the third. They name the old
    request's hash and are refused."""
    p = Protocol.deploy(chain.w3)
    a_node, b_node, c_node = p.register_oracles(3)
    keys = {Account.from_key(dev_private_key(i)).address: dev_private_key(i) for i in range(10)}
    bits = random_bits(rng)
    before_reorg = chain.rpc("evm_snapshot")
    old = p.request(fee=FEE, quorum=3, prompt="What is the capital of France?")
    p.run_round(old, [(n, PARIS, bits) for n in (a_node, b_node, c_node)])

    def signed_dispute(disputer: str) -> bytes:
        tx = p.dispute_call(old, b_node).build_transaction(
            {"from": disputer, "nonce": chain.w3.eth.get_transaction_count(disputer)}
        )
        return bytes(Account.sign_transaction(tx, keys[disputer]).raw_transaction)

    replays = [signed_dispute(n) for n in (a_node, c_node)]
    assert chain.rpc("evm_revert", before_reorg) is True
    p.terms.clear()
    p.revealed.clear()
    new = p.request(fee=FEE, quorum=3, prompt="What is the capital of Germany?")
    assert new == old
    berlin = "The capital of Germany is Berlin."
    p.run_round(new, [(n, berlin, bits) for n in (a_node, b_node, c_node)])
    for raw in replays:  # each holds its sender's next nonce on the new chain too
        sent = chain.w3.eth.send_raw_transaction(raw)
        assert chain.w3.eth.wait_for_transaction_receipt(sent)["status"] == 0
    p.close_disputes(new)
    receipt = p.finalize(new, p.seat_bits(new), berlin)
    assert p.events(receipt, "Slashed") == ()
    (event,) = p.events(receipt, "InferenceFinalized")
    assert event["args"]["clusterMask"] == 0b111
