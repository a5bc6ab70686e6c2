"""Python's compute_consensus against the contract's clusterOf, bit for bit (DESIGN.md §3).

Every case goes through ``eth_call`` to a coordinator deployed once for this module on the
session's anvil (clusterOf is pure, so the cases cannot disturb one another). Random cases
cover quorums 1-16, missing reveals, clustered and scattered embeddings, distances at the
neighbour threshold, exclusions, excluded reveals whose bits have another length, and
tickets: few distinct values, so that equal supports and spreads fall to the ticket and
equal tickets to the seat (the medoid's tie-breaks). Whole rounds on the contract (commits,
reveals, disputes, finalize) check that disputes exclude exactly as the node counts them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from web3.contract import Contract

from oracle.chain.anvil import Anvil
from oracle.chain.artifacts import load_artifact
from oracle.chain.deploy import deploy_contract
from oracle.consensus import BASIS_POINTS, cluster_mask, compute_consensus, dispute_excludes
from oracle.errors import EmbeddingLengthMismatch, InvalidConsensusParameters, InvalidEmbedding
from tests.support.protocol import Protocol, revert_reason

DIM_BYTES = 48  # all-MiniLM-L6-v2: 384 sign bits
MAX_QUORUM = 16
# eth_call latency is the network's, not the code's: no per-example deadline.
MAIN_CASES = settings(max_examples=1_600, deadline=None)
# 1 and 4 bytes: one partial word; 31, 32, 33: either side of a word; 64 and 96: two and
# three whole words (512 and 768 bits); 47 and 65: a long partial tail after whole words.
OTHER_DIM_BYTES = (1, 4, 31, 32, 33, 47, 64, 65, 96)
OTHER_LENGTH_CASES = settings(max_examples=500, deadline=None)

ContractResult = tuple[bool, int, int, int, int]
"""(reached, winner, support, need, clusterMask), in the contract's order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    bits: list[bytes]
    excluded: list[bool]
    quorum: int
    sec_distance: int
    sec_percentage: int
    tickets: list[int] | None = None
    """One per seat; None: all zero (ties go to the lower seat)."""

    @property
    def seat_tickets(self) -> list[int]:
        return [0] * len(self.bits) if self.tickets is None else self.tickets


@pytest.fixture(scope="module")
def coordinator(anvil: Anvil) -> Iterator[Contract]:
    """One coordinator for the module; the deployment is undone when the module is done."""
    w3 = anvil.w3
    snapshot = anvil.rpc("evm_snapshot")
    try:
        address = deploy_contract(w3, "InferenceCoordinator", 30, 10, sender=w3.eth.accounts[0])
        yield w3.eth.contract(address=address, abi=load_artifact("InferenceCoordinator").abi)
    finally:
        assert anvil.rpc("evm_revert", snapshot) is True


def contract_result(coordinator: Contract, case: Case) -> ContractResult:
    call = coordinator.functions.clusterOf(
        case.bits,
        case.excluded,
        case.seat_tickets,
        case.quorum,
        case.sec_distance,
        case.sec_percentage,
    )
    reached, winner, support, need, mask = call.call()
    return bool(reached), int(winner), int(support), int(need), int(mask)


def python_result(case: Case) -> ContractResult:
    """compute_consensus in the contract's shape: no winner reads as winner 0, support 0."""
    result = compute_consensus(
        list(zip(case.bits, case.excluded, strict=True)),
        quorum=case.quorum,
        sec_distance_bp=case.sec_distance,
        sec_percentage_bp=case.sec_percentage,
        tickets=case.seat_tickets,
    )
    if result.winner is None:
        assert (result.reached, result.support, result.cluster) == (False, 0, ())
    winner = 0 if result.winner is None else result.winner
    return result.reached, winner, result.support, result.need, cluster_mask(result)


def assert_agree(coordinator: Contract, case: Case) -> ContractResult:
    expected = python_result(case)
    assert contract_result(coordinator, case) == expected, case
    return expected


def threshold_bits(sec_distance: int, dim_bits: int) -> int:
    """The largest distance that still counts as a neighbour."""
    return sec_distance * dim_bits // BASIS_POINTS


def flip(bits: bytes, positions: Sequence[int]) -> bytes:
    value = int.from_bytes(bits, "big")
    for position in positions:
        value ^= 1 << position
    return value.to_bytes(len(bits), "big")


# --- strategies --------------------------------------------------------------------------

sec_distances = st.one_of(
    st.integers(1_000, 5_000),  # where answers agree or not (docs/consensus.md)
    st.integers(1_000, 5_000),
    st.integers(0, BASIS_POINTS),
    st.sampled_from([0, 1, 3_500, 9_999, BASIS_POINTS]),
)
tickets = st.one_of(
    st.integers(0, 3),  # equal tickets are common: the seat decides
    st.integers(0, 2**88 - 1),  # a committed ticket's range (stake at least 1e14 wei)
    st.sampled_from([0, 2**88 - 1]),
)
sec_percentages = st.one_of(
    st.integers(1, BASIS_POINTS),
    st.sampled_from([1, 3_333, 5_000, 5_001, 6_667, 6_700, 9_999, BASIS_POINTS]),
)


@st.composite
def clustered_bits(
    draw: st.DrawFn, *, count: int, dim_bytes: int, sec_distance: int
) -> list[bytes]:
    """A few base vectors; each reveal is one of them with some bits flipped.

    How many bits flip is drawn near the neighbour threshold as often as anywhere else, so
    that distances land exactly on it; which bits flip comes from a drawn seed.
    """
    dim_bits = dim_bytes * 8
    bases = draw(
        st.lists(st.binary(min_size=dim_bytes, max_size=dim_bytes), min_size=1, max_size=3)
    )
    limit = threshold_bits(sec_distance, dim_bits)
    near_threshold = sorted({min(max(limit + step, 0), dim_bits) for step in (-1, 0, 1)})
    flip_counts = st.one_of(
        st.just(0),
        st.integers(0, max(1, dim_bits // 3)),
        st.sampled_from(near_threshold),
    )
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    bits = []
    for _ in range(count):
        base = bases[draw(st.integers(0, len(bases) - 1))]
        bits.append(flip(base, rng.sample(range(dim_bits), draw(flip_counts))))
    return bits


@st.composite
def cases(draw: st.DrawFn, dim_bytes: st.SearchStrategy[int]) -> Case:
    length = draw(dim_bytes)
    quorum = draw(st.integers(1, MAX_QUORUM))
    count = quorum - draw(st.integers(0, quorum))  # shrinks towards every seat revealed
    sec_distance = draw(sec_distances)
    if draw(st.booleans()):
        bits = draw(clustered_bits(count=count, dim_bytes=length, sec_distance=sec_distance))
    else:
        scattered = st.binary(min_size=length, max_size=length)
        bits = draw(st.lists(scattered, min_size=count, max_size=count))
    seats = st.integers(0, 2**count - 1)
    # about a quarter of the seats when any: both masks must pick a seat
    excluded_mask = draw(st.one_of(st.just(0), st.builds(int.__and__, seats, seats)))
    excluded = [bool(excluded_mask >> seat & 1) for seat in range(count)]
    if draw(st.integers(0, 3)) == 0:  # excluded bits of any length: neither side reads them
        odd_length = st.binary(max_size=length + 40)
        pairs = zip(bits, excluded, strict=True)
        bits = [draw(odd_length) if out else seat_bits for seat_bits, out in pairs]
    return Case(
        bits=bits,
        excluded=excluded,
        quorum=quorum,
        sec_distance=sec_distance,
        sec_percentage=draw(sec_percentages),
        tickets=draw(st.lists(tickets, min_size=count, max_size=count)),
    )


# --- properties --------------------------------------------------------------------------


@MAIN_CASES
@given(case=cases(st.just(DIM_BYTES)))
def test_384_bit_consensus_matches_the_contract(coordinator: Contract, case: Case) -> None:
    assert_agree(coordinator, case)


@OTHER_LENGTH_CASES
@given(case=cases(st.sampled_from(OTHER_DIM_BYTES)))
def test_other_lengths_match_the_contract(coordinator: Contract, case: Case) -> None:
    assert_agree(coordinator, case)


# --- edge cases --------------------------------------------------------------------------

BASE = bytes(range(DIM_BYTES))


def case_of(
    bits: list[bytes],
    excluded: list[bool] | None = None,
    tickets: list[int] | None = None,
    **frame: int,
) -> Case:
    values = {"quorum": len(bits) or 1, "sec_distance": 3_500, "sec_percentage": 6_700}
    values.update(frame)
    return Case(bits=bits, excluded=excluded or [False] * len(bits), tickets=tickets, **values)


def test_a_full_tie_goes_to_the_lower_seat(coordinator: Contract) -> None:
    far = bytes(b ^ 0xFF for b in BASE)  # 384 bits from BASE: never a neighbour
    case = case_of([far, BASE, far, BASE], quorum=4, sec_percentage=5_000)
    assert assert_agree(coordinator, case) == (True, 0, 2, 2, 0b0101)
    case = case_of([far, BASE, far, BASE], quorum=4, sec_percentage=5_000, tickets=[7, 5, 7, 5])
    assert assert_agree(coordinator, case) == (True, 1, 2, 2, 0b1010)


def test_equal_support_and_spread_go_to_the_smaller_ticket(coordinator: Contract) -> None:
    far = bytes(b ^ 0xFF for b in BASE)
    case = case_of([far, BASE, far, BASE], quorum=4, sec_percentage=5_000, tickets=[9, 8, 7, 9])
    assert assert_agree(coordinator, case) == (True, 2, 2, 2, 0b0101)


def test_the_medoid_wins_over_an_earlier_seat_and_a_smaller_ticket(coordinator: Contract) -> None:
    lie = flip(BASE, range(100))  # in the cluster (100 <= 134 bits), at its edge
    honest = [flip(BASE, range(100 + 10 * i, 110 + 10 * i)) for i in range(3)]
    case = case_of([lie, *honest, BASE], tickets=[0, 5, 5, 5, 5], sec_percentage=6_000)
    assert assert_agree(coordinator, case) == (True, 4, 5, 3, 0b11111)


def test_a_tie_skips_an_excluded_earlier_seat(coordinator: Contract) -> None:
    far = bytes(b ^ 0xFF for b in BASE)
    case = case_of([BASE, far, BASE, far], [True, False, False, False], sec_percentage=5_000)
    assert assert_agree(coordinator, case) == (True, 1, 2, 2, 0b1010)


def test_both_reject_eligible_empty_bits(coordinator: Contract) -> None:
    for bits, excluded in (
        ([b"", b""], [False, False]),
        ([BASE, b""], [False, False]),
        ([b"", BASE], [True, False]),
    ):
        case = case_of(bits, excluded)
        if excluded[0]:  # excluded empty bits are never read
            assert assert_agree(coordinator, case)[1] == 1
            continue
        with pytest.raises((InvalidEmbedding, EmbeddingLengthMismatch)):
            python_result(case)
        reason = revert_reason(lambda case=case: contract_result(coordinator, case))
        assert reason.startswith(("EmptyEmbedding", "EmbeddingLengthMismatch")), reason


def test_tickets_must_match_the_seats(coordinator: Contract) -> None:
    case = case_of([BASE, BASE], tickets=[1])
    with pytest.raises(InvalidConsensusParameters):
        python_result(case)
    assert revert_reason(lambda: contract_result(coordinator, case)).startswith("SeatCountMismatch")


def test_all_excluded_gives_no_winner(coordinator: Contract) -> None:
    case = case_of([BASE, BASE, BASE], [True, True, True])
    assert assert_agree(coordinator, case) == (False, 0, 0, 3, 0)


@pytest.mark.parametrize("sec_percentage", [0, 1, BASIS_POINTS])
def test_no_reveals_gives_no_winner(coordinator: Contract, sec_percentage: int) -> None:
    case = case_of([], quorum=5, sec_percentage=sec_percentage)
    reached, winner, support, _need, mask = assert_agree(coordinator, case)
    assert (reached, winner, support, mask) == (False, 0, 0, 0)


@pytest.mark.parametrize(
    ("sec_distance", "distance", "neighbours"),
    [
        (2_500, 96, True),  # 96 * 10000 == 2500 * 384: exactly at the threshold
        (2_500, 97, False),
        (2_474, 95, True),  # 2474 * 384 / 10000 = 95.0016: rounds down to 95 bits
        (2_474, 96, False),
        (0, 0, True),
        (0, 1, False),
        (BASIS_POINTS, DIM_BYTES * 8, True),
    ],
)
def test_the_neighbour_threshold_is_inclusive(
    coordinator: Contract, sec_distance: int, distance: int, neighbours: bool
) -> None:
    other = flip(BASE, range(distance))
    case = case_of([BASE, other], quorum=2, sec_distance=sec_distance, sec_percentage=BASIS_POINTS)
    expected = (True, 0, 2, 2, 0b11) if neighbours else (False, 0, 1, 2, 0b01)
    assert assert_agree(coordinator, case) == expected


@pytest.mark.parametrize(
    ("sec_percentage", "quorum", "need"),
    [
        (6_700, 3, 3),  # 2.01 rounds up
        (6_666, 3, 2),  # 1.9998 rounds up
        (5_000, 4, 2),  # exact
        (5_001, 4, 3),  # 2.0004 rounds up
        (1, 16, 1),
        (BASIS_POINTS, 16, 16),
        (0, 7, 0),
    ],
)
def test_need_rounds_up_against_the_quorum(
    coordinator: Contract, sec_percentage: int, quorum: int, need: int
) -> None:
    case = case_of([BASE, BASE], quorum=quorum, sec_percentage=sec_percentage)
    assert assert_agree(coordinator, case)[3] == need


def test_excluded_bits_of_another_length_are_ignored(coordinator: Contract) -> None:
    case = case_of(
        [b"", BASE, BASE[:5], flip(BASE, [0, 1]), b"\xff" * 100],
        [True, False, True, False, True],
        quorum=3,
        sec_percentage=6_666,
    )
    assert assert_agree(coordinator, case) == (True, 1, 2, 2, 0b01010)


def test_both_reject_eligible_bits_of_different_lengths(coordinator: Contract) -> None:
    case = case_of([BASE, BASE[:47]])
    with pytest.raises(EmbeddingLengthMismatch):
        python_result(case)
    assert revert_reason(lambda: contract_result(coordinator, case)) == (
        "EmbeddingLengthMismatch(index=1, length=47, expected=48)"
    )


def test_the_tail_of_a_partial_word_is_masked(coordinator: Contract) -> None:
    """Bits past the end of a 33-byte embedding (the next calldata) must not count."""
    short = bytes(33)
    differs_in_last_bit = flip(short, [0])
    case = case_of([short, differs_in_last_bit], quorum=2, sec_distance=0)
    assert assert_agree(coordinator, case) == (False, 0, 1, 2, 0b01)
    case = case_of([short, short, b"\xff" * 64], [False, False, True], sec_distance=0)
    assert assert_agree(coordinator, case) == (False, 0, 2, 3, 0b011)


# --- whole rounds: disputes, exclusion and the winner as finalize decides them -------------

ROUND_CASES = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def rounds(anvil: Anvil) -> Iterator[Protocol]:
    """A coordinator with 16 registered nodes; each example runs between a snapshot and its
    revert."""
    snapshot = anvil.rpc("evm_snapshot")
    try:
        protocol = Protocol.deploy(anvil.w3)
        protocol.oracles = [protocol.fresh_account() for _ in range(MAX_QUORUM)]
        protocol.register_oracles(MAX_QUORUM)
        yield protocol
    finally:
        assert anvil.rpc("evm_revert", snapshot) is True


@dataclass(frozen=True, kw_only=True, slots=True)
class Round:
    quorum: int
    bits: list[bytes]
    """One per committer, in commit (= seat) order."""
    revealed: list[bool]
    disputes: list[list[int]]
    """Per seat, the seats that dispute it (revealed ones only)."""
    sec_distance: int
    sec_percentage: int


@st.composite
def round_cases(draw: st.DrawFn) -> Round:
    quorum = draw(st.integers(1, 7))
    committers = quorum - draw(st.integers(0, quorum - 1))
    sec_distance = draw(sec_distances)
    bits = draw(clustered_bits(count=committers, dim_bytes=DIM_BYTES, sec_distance=sec_distance))
    revealed = draw(st.lists(st.booleans(), min_size=committers, max_size=committers))
    revealers = [i for i, r in enumerate(revealed) if r]
    disputes = [
        sorted(draw(st.sets(st.sampled_from(revealers)))) if revealers and revealed[i] else []
        for i in range(committers)
    ]
    disputes = [[d for d in against if d != i] for i, against in enumerate(disputes)]
    return Round(
        quorum=quorum,
        bits=bits,
        revealed=revealed,
        disputes=disputes,
        sec_distance=sec_distance,
        sec_percentage=draw(sec_percentages),
    )


@ROUND_CASES
@given(case=round_cases())
def test_finalize_settles_as_the_node_computes(anvil: Anvil, rounds: Protocol, case: Round) -> None:
    """Commits, some reveals, some disputes, finalize: the contract's winner and cluster (or
    failure) are what the node computes from the same events, exclusions included."""
    snapshot = anvil.rpc("evm_snapshot")
    try:
        _run_round(rounds, case)
    finally:
        assert anvil.rpc("evm_revert", snapshot) is True


def _run_round(p: Protocol, case: Round) -> None:
    request_id = p.request(
        quorum=case.quorum, secDistance=case.sec_distance, secPercentage=case.sec_percentage
    )
    nodes = p.oracles[: len(case.bits)]
    outputs = [f"answer {i}" for i in range(len(case.bits))]
    answers = [
        p.commit(node, request_id, output, bits)
        for node, output, bits in zip(nodes, outputs, case.bits, strict=True)
    ]
    assert p.seated(request_id) == nodes  # fewer committers than seats: no eviction
    p.close_commits(request_id)
    for answer, revealed in zip(answers, case.revealed, strict=True):
        if revealed:
            p.reveal(answer)
    for accused, disputers in enumerate(case.disputes):
        for disputer in disputers:
            p.dispute(nodes[disputer], request_id, nodes[accused])
    p.close_disputes(request_id)

    excluded = [
        not revealed or dispute_excludes(len(against), case.quorum)
        for revealed, against in zip(case.revealed, case.disputes, strict=True)
    ]
    seats = zip(case.bits, case.revealed, excluded, strict=True)
    expected = compute_consensus(
        [(bits if revealed else b"", out) for bits, revealed, out in seats],
        quorum=case.quorum,
        sec_distance_bp=case.sec_distance,
        sec_percentage_bp=case.sec_percentage,
        tickets=[p.ticket(request_id, node) for node in nodes],
    )
    winner_output = ""
    if expected.reached and expected.winner is not None:
        winner_output = outputs[expected.winner]
    receipt = p.finalize(request_id, p.seat_bits(request_id), winner_output)
    finalized = p.events(receipt, "InferenceFinalized")
    if expected.reached:
        assert expected.winner is not None
        ((event,),) = (finalized,)
        assert (event["args"]["winnerSeat"], event["args"]["clusterMask"]) == (
            expected.winner,
            cluster_mask(expected),
        )
    else:
        assert not finalized
        (failed,) = p.events(receipt, "InferenceFailed")
        reason = 1 if not any(case.revealed) else 2  # NoReveals, NoConsensus
        assert failed["args"]["reason"] == reason
    slashed = {e["args"]["oracle"] for e in p.events(receipt, "Slashed")}
    faulty = {
        node
        for node, revealed, out in zip(nodes, case.revealed, excluded, strict=True)
        if not revealed or out
    }
    assert slashed == faulty
