"""The consensus arithmetic of DESIGN.md §3: hand-made cases and properties."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle.consensus import (
    DEFAULT_READ_BACK_MARGIN,
    DEFAULT_SEC_DISTANCE_BP,
    ConsensusResult,
    RevealBits,
    are_neighbours,
    cluster_mask,
    compute_consensus,
    default_verify_tolerance_bits,
    dispute_excludes,
    hamming,
    length_fault,
    pack_sign_bits,
    read_back_fault,
    required_support,
    verify_embedding,
)
from oracle.domain import Reveal
from oracle.errors import (
    EmbeddingLengthMismatch,
    InvalidConsensusParameters,
    InvalidEmbedding,
    OracleError,
)

DIM_BYTES = 48
DIM_BITS = DIM_BYTES * 8
FAST = settings(max_examples=150, deadline=None)

ZEROS = bytes(DIM_BYTES)
ONES = b"\xff" * DIM_BYTES


def flipped(bits: bytes, *positions: int) -> bytes:
    """`bits` with the given bit positions (0 = most significant bit of byte 0) flipped."""
    value = int.from_bytes(bits, "big")
    for position in positions:
        value ^= 1 << (len(bits) * 8 - 1 - position)
    return value.to_bytes(len(bits), "big")


def consensus(
    reveals: list[RevealBits],
    *,
    quorum: int | None = None,
    sec_distance_bp: int = DEFAULT_SEC_DISTANCE_BP,
    sec_percentage_bp: int = 8000,
    tickets: list[int] | None = None,
) -> ConsensusResult:
    return compute_consensus(
        reveals,
        quorum=len(reveals) if quorum is None else quorum,
        sec_distance_bp=sec_distance_bp,
        sec_percentage_bp=sec_percentage_bp,
        tickets=tickets,
    )


def reference_consensus(
    reveals: list[RevealBits],
    *,
    quorum: int,
    sec_distance_bp: int,
    sec_percentage_bp: int,
    tickets: list[int] | None = None,
) -> tuple[bool, int | None, int, int, tuple[int, ...]]:
    """DESIGN.md §3 restated as plainly as possible, over bit strings, for comparison."""
    as_text = [format(int.from_bytes(bits, "big"), f"0{len(bits) * 8}b") for bits, _ in reveals]
    eligible = [i for i, (_, excluded) in enumerate(reveals) if not excluded]

    def close(i: int, j: int) -> bool:
        differing = sum(x != y for x, y in zip(as_text[i], as_text[j], strict=True))
        return Fraction(differing, len(as_text[i])) <= Fraction(sec_distance_bp, 10000)

    def differing(i: int, j: int) -> int:
        return sum(x != y for x, y in zip(as_text[i], as_text[j], strict=True))

    counts = {r: sum(close(r, s) for s in eligible) for r in eligible}
    need = math.ceil(Fraction(sec_percentage_bp * quorum, 10000))
    if not eligible:
        return False, None, 0, need, ()
    best = max(counts.values())
    candidates = [r for r in eligible if counts[r] == best]
    spread = {r: sum(differing(r, s) for s in eligible if close(r, s)) for r in candidates}
    medoids = [r for r in candidates if spread[r] == min(spread.values())]
    ticket = {r: 0 if tickets is None else tickets[r] for r in medoids}
    winner = min(r for r in medoids if ticket[r] == min(ticket.values()))
    cluster = tuple(s for s in eligible if close(winner, s))
    return best >= need, winner, best, need, cluster


# --- sign bits ------------------------------------------------------------------------


def test_sign_bits_are_packed_most_significant_bit_first() -> None:
    vector = [0.5, -0.1, 0.0, 0.2, -0.0, -3.0, 1e-30, 7.0] + [-1.0] * 7 + [2.0]
    assert pack_sign_bits(vector) == bytes([0b10010011, 0b00000001])


def test_384_dimensions_give_48_bytes() -> None:
    vector = np.linspace(-1.0, 1.0, 384, dtype=np.float32)
    bits = pack_sign_bits(vector)
    assert len(bits) == 48
    assert bits == bytes(24) + b"\xff" * 24


@pytest.mark.parametrize("dims", [0, 7, 383, 385])
def test_dimensions_must_be_a_multiple_of_8(dims: int) -> None:
    with pytest.raises(InvalidEmbedding, match="multiple of 8"):
        pack_sign_bits(np.ones(dims))


def test_only_one_finite_vector_packs() -> None:
    with pytest.raises(InvalidEmbedding, match="shape"):
        pack_sign_bits(np.ones((2, 8)))
    with pytest.raises(InvalidEmbedding, match="NaN"):
        pack_sign_bits([1.0] * 7 + [float("nan")])


@FAST
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8))
def test_sign_bits_match_each_component(chunk: list[float]) -> None:
    vector = (chunk * 8)[: 8 * len(chunk)]
    bits = pack_sign_bits(vector)
    for i, component in enumerate(vector):
        assert (bits[i // 8] >> (7 - i % 8)) & 1 == (component > 0)


# --- distance -------------------------------------------------------------------------


def test_hamming_counts_differing_bits() -> None:
    assert hamming(ZEROS, ZEROS) == 0
    assert hamming(ZEROS, ONES) == DIM_BITS
    assert hamming(ZEROS, flipped(ZEROS, 0, 5, 383)) == 3
    assert hamming(b"\x0f", b"\xf0") == 8


def test_hamming_refuses_unequal_lengths() -> None:
    with pytest.raises(EmbeddingLengthMismatch) as raised:
        hamming(ZEROS, ZEROS[:-1])
    assert (raised.value.left_bytes, raised.value.right_bytes) == (48, 47)
    assert "48 bytes against 47 bytes" in str(raised.value)
    assert isinstance(raised.value, OracleError)


@FAST
@given(
    st.binary(min_size=6, max_size=6),
    st.binary(min_size=6, max_size=6),
    st.binary(min_size=6, max_size=6),
)
def test_hamming_is_a_metric(a: bytes, b: bytes, c: bytes) -> None:
    assert hamming(a, b) == hamming(b, a)
    assert hamming(a, c) <= hamming(a, b) + hamming(b, c)
    assert (hamming(a, b) == 0) == (a == b)
    assert hamming(a, b) == sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


def test_neighbours_boundary_is_inclusive() -> None:
    # 0.35 of 384 bits is 134.4 bits: 134 is within, 135 is not.
    assert are_neighbours(134, 3500, 384)
    assert not are_neighbours(135, 3500, 384)
    # exactly on the line counts as neighbours: 100 / 400 == 0.25
    assert are_neighbours(100, 2500, 400)
    assert not are_neighbours(101, 2500, 400)
    assert are_neighbours(0, 0, 384)
    assert not are_neighbours(1, 0, 384)


# --- required support -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sec_percentage_bp", "quorum", "need"),
    [
        (8000, 3, 3),  # 2.4 rounds up
        (6667, 3, 3),  # 2.0001 rounds up
        (6666, 3, 2),  # 1.9998 rounds up to 2
        (5000, 4, 2),  # exact
        (8000, 5, 4),  # exact
        (10000, 16, 16),
        (1, 16, 1),
        (0, 5, 0),
    ],
)
def test_required_support_rounds_up(sec_percentage_bp: int, quorum: int, need: int) -> None:
    assert required_support(sec_percentage_bp, quorum) == need


@FAST
@given(st.integers(0, 10000), st.integers(1, 16))
def test_required_support_is_the_ceiling(sec_percentage_bp: int, quorum: int) -> None:
    need = required_support(sec_percentage_bp, quorum)
    assert need == math.ceil(Fraction(sec_percentage_bp * quorum, 10000))
    assert need * 10000 >= sec_percentage_bp * quorum > (need - 1) * 10000 or need == 0
    assert 0 <= need <= quorum


# --- clustering: hand-made cases ------------------------------------------------------

NEAR_ZEROS = flipped(ZEROS, *range(40))  # 40 bits from ZEROS: a neighbour at 0.35
FAR = flipped(ZEROS, *range(200))  # 200 bits from ZEROS: no neighbour at 0.35


def test_identical_reveals_reach_consensus() -> None:
    result = consensus([(ZEROS, False)] * 3)
    assert result == ConsensusResult(reached=True, winner=0, support=3, need=3, cluster=(0, 1, 2))


def test_equal_support_and_spread_go_to_the_smaller_ticket() -> None:
    reveals: list[RevealBits] = [(ONES, False), (ZEROS, False), (ZEROS, False), (ONES, False)]
    result = consensus(reveals, tickets=[50, 40, 30, 60])
    assert (result.winner, result.support, result.cluster) == (2, 2, (1, 2))
    result = consensus(reveals, tickets=[10, 40, 30, 60])
    assert (result.winner, result.cluster) == (0, (0, 3))


def test_equal_tickets_go_to_the_lower_seat() -> None:
    reveals: list[RevealBits] = [(ONES, False), (ZEROS, False), (ZEROS, False), (ONES, False)]
    assert consensus(reveals, tickets=[7, 5, 5, 7]).winner == 1
    assert consensus(reveals).winner == 0  # no tickets: as if all equal


def test_the_winner_is_the_medoid_not_the_earliest_seat() -> None:
    """A lie that sits inside the cluster from the first seat is not delivered: the member
    closest to all the others is, whatever the seat order and the tickets."""
    centre = ZEROS
    lie = flipped(ZEROS, *range(100))  # 100 bits from the centre: still a neighbour
    honest = [flipped(ZEROS, *range(i * 10, i * 10 + 10)) for i in range(3)]  # 10 bits off
    reveals: list[RevealBits] = [(lie, False), *((b, False) for b in honest), (centre, False)]
    result = consensus(reveals, sec_percentage_bp=6000, tickets=[0, 9, 9, 9, 9])
    assert result.support == 5 and result.winner == 4
    # the honest answers lie 90 bits from the lie, 20 from each other: one cluster of five
    assert result.cluster == (0, 1, 2, 3, 4)


def test_more_neighbours_beat_a_smaller_spread() -> None:
    near = flipped(ZEROS, *range(130))  # 130 bits: a neighbour of ZEROS at 0.35
    result = consensus([(ONES, False), (ONES, False), (ZEROS, False), (near, False), (near, False)])
    assert (result.winner, result.support) == (3, 3)


def test_tickets_must_match_the_seats() -> None:
    with pytest.raises(InvalidConsensusParameters):
        consensus([(ZEROS, False), (ZEROS, False)], tickets=[1])


def test_largest_support_beats_an_earlier_seat() -> None:
    result = consensus([(ONES, False), (ZEROS, False), (NEAR_ZEROS, False), (ZEROS, False)])
    assert (result.winner, result.support, result.cluster) == (1, 3, (1, 2, 3))


def test_cluster_is_the_winner_and_its_neighbours_not_a_closure() -> None:
    # the middle reveal is 90 bits from each end; the ends are 180 bits apart
    left, middle, right = ZEROS, flipped(ZEROS, *range(90)), flipped(ZEROS, *range(180))
    result = consensus([(left, False), (right, False), (middle, False)])
    assert (result.winner, result.support, result.cluster) == (2, 3, (0, 1, 2))
    # with the middle excluded nobody has a neighbour: the first seat wins alone
    result = consensus([(left, False), (right, False), (middle, True)])
    assert (result.winner, result.support, result.cluster) == (0, 1, (0,))


def test_excluded_reveals_are_neither_candidate_nor_neighbour() -> None:
    reveals = [(ZEROS, True), (ZEROS, True), (ONES, False), (ZEROS, False), (ONES, False)]
    result = consensus(reveals, sec_percentage_bp=4000)
    assert (result.reached, result.winner, result.support, result.need) == (True, 2, 2, 2)
    assert result.cluster == (2, 4)


def test_excluded_reveals_may_hold_any_bits() -> None:
    result = consensus([(ZEROS, False), (b"", True), (ZEROS[:5], True), (ZEROS, False)])
    assert (result.winner, result.cluster) == (0, (0, 3))


def test_need_is_measured_against_the_quorum_not_the_reveals() -> None:
    three_alike = [(ZEROS, False)] * 3
    short = consensus(three_alike, quorum=5, sec_percentage_bp=8000)
    assert (short.reached, short.support, short.need) == (False, 3, 4)
    assert short.winner == 0 and short.cluster == (0, 1, 2)  # reported even without consensus
    full = consensus(three_alike, quorum=3, sec_percentage_bp=8000)
    assert (full.reached, full.need) == (True, 3)


def test_no_eligible_reveal_means_no_winner() -> None:
    expected = ConsensusResult(reached=False, winner=None, support=0, need=3, cluster=())
    assert consensus([], quorum=3) == expected
    assert consensus([(ZEROS, True), (ONES, True)], quorum=3) == expected
    assert cluster_mask(expected) == 0


def test_unequal_lengths_among_eligible_reveals_are_refused() -> None:
    with pytest.raises(EmbeddingLengthMismatch):
        consensus([(ZEROS, False), (ZEROS[:-1], False)])
    with pytest.raises(InvalidEmbedding, match="empty"):
        consensus([(b"", False)])


def test_empty_bits_are_refused_wherever_an_eligible_seat_holds_them() -> None:
    with pytest.raises(EmbeddingLengthMismatch):
        consensus([(ZEROS, False), (b"", False)])
    with pytest.raises(InvalidEmbedding):
        consensus([(ZEROS, True), (b"", False), (ZEROS, False)])
    assert consensus([(b"", True), (ZEROS, False)]).winner == 1  # excluded: never read


def test_reveal_records_and_pairs_give_the_same_result() -> None:
    pairs: list[RevealBits] = [(ONES, False), (ZEROS, True), (ZEROS, False), (FAR, False)]
    records = [
        Reveal(
            seat=i,
            oracle=f"0x{i:040x}",
            output="...",
            model_index=0,
            embedding_bits=bits,
            excluded=excluded,
        )
        for i, (bits, excluded) in enumerate(pairs)
    ]
    assert compute_consensus(records, quorum=4, sec_distance_bp=3500, sec_percentage_bp=5000) == (
        compute_consensus(pairs, quorum=4, sec_distance_bp=3500, sec_percentage_bp=5000)
    )


@pytest.mark.parametrize(
    ("quorum", "sec_distance_bp", "sec_percentage_bp"),
    [(0, 3500, 8000), (3, -1, 8000), (3, 10001, 8000), (3, 3500, -1), (3, 3500, 10001)],
)
def test_parameters_out_of_range_are_refused(
    quorum: int, sec_distance_bp: int, sec_percentage_bp: int
) -> None:
    with pytest.raises(InvalidConsensusParameters):
        compute_consensus(
            [(ZEROS, False)],
            quorum=quorum,
            sec_distance_bp=sec_distance_bp,
            sec_percentage_bp=sec_percentage_bp,
        )


def test_cluster_mask_sets_one_bit_per_seat() -> None:
    result = consensus(
        [(ZEROS, False), (ONES, False), (ZEROS, False), (ONES, False), (ZEROS, False)],
        sec_percentage_bp=6000,
    )
    assert result.cluster == (0, 2, 4)
    assert cluster_mask(result) == 0b10101
    sixteen = consensus([(ZEROS, False)] * 16)
    assert cluster_mask(sixteen) == 2**16 - 1


# --- clustering: properties -----------------------------------------------------------


@st.composite
def consensus_inputs(draw: st.DrawFn) -> tuple[list[RevealBits], int, int, int]:
    """Up to 16 reveals of 6 bytes drawn near a few centres, so that clusters form."""
    width = 6
    centres = draw(st.lists(st.binary(min_size=width, max_size=width), min_size=1, max_size=3))
    count = draw(st.integers(0, 16))
    reveals: list[RevealBits] = []
    for _ in range(count):
        centre = draw(st.sampled_from(centres))
        flips = draw(st.lists(st.integers(0, width * 8 - 1), max_size=12))
        reveals.append((flipped(centre, *flips), draw(st.booleans())))
    quorum = draw(st.integers(max(1, count), 16))
    return reveals, quorum, draw(st.integers(0, 10000)), draw(st.integers(0, 10000))


@FAST
@given(consensus_inputs())
def test_consensus_matches_the_plain_restatement(
    drawn: tuple[list[RevealBits], int, int, int],
) -> None:
    reveals, quorum, sec_distance_bp, sec_percentage_bp = drawn
    result = compute_consensus(
        reveals, quorum=quorum, sec_distance_bp=sec_distance_bp, sec_percentage_bp=sec_percentage_bp
    )
    assert (result.reached, result.winner, result.support, result.need, result.cluster) == (
        reference_consensus(
            reveals,
            quorum=quorum,
            sec_distance_bp=sec_distance_bp,
            sec_percentage_bp=sec_percentage_bp,
        )
    )


@FAST
@given(consensus_inputs(), st.data())
def test_consensus_with_tickets_matches_the_plain_restatement(
    drawn: tuple[list[RevealBits], int, int, int], data: st.DataObject
) -> None:
    reveals, quorum, sec_distance_bp, sec_percentage_bp = drawn
    # few distinct tickets, so that equal tickets happen
    tickets = data.draw(st.lists(st.integers(0, 3), min_size=len(reveals), max_size=len(reveals)))
    parameters = {
        "quorum": quorum,
        "sec_distance_bp": sec_distance_bp,
        "sec_percentage_bp": sec_percentage_bp,
        "tickets": tickets,
    }
    result = compute_consensus(reveals, **parameters)  # type: ignore[arg-type]
    assert (result.reached, result.winner, result.support, result.need, result.cluster) == (
        reference_consensus(reveals, **parameters)  # type: ignore[arg-type]
    )


@FAST
@given(consensus_inputs())
def test_winner_has_the_most_support(drawn: tuple[list[RevealBits], int, int, int]) -> None:
    reveals, quorum, sec_distance_bp, sec_percentage_bp = drawn
    result = compute_consensus(
        reveals, quorum=quorum, sec_distance_bp=sec_distance_bp, sec_percentage_bp=sec_percentage_bp
    )
    eligible = [i for i, (_, excluded) in enumerate(reveals) if not excluded]
    if result.winner is None:
        assert not eligible and not result.reached and result.support == 0
        return
    dim_bits = len(reveals[0][0]) * 8

    def support_of(r: int) -> int:
        return sum(
            are_neighbours(hamming(reveals[r][0], reveals[s][0]), sec_distance_bp, dim_bits)
            for s in eligible
        )

    def spread_of(r: int) -> int:
        return sum(
            hamming(reveals[r][0], reveals[s][0])
            for s in eligible
            if are_neighbours(hamming(reveals[r][0], reveals[s][0]), sec_distance_bp, dim_bits)
        )

    assert result.winner in eligible and result.winner in result.cluster
    assert result.support == len(result.cluster) == max(support_of(r) for r in eligible)
    best = [r for r in eligible if support_of(r) == result.support]
    assert spread_of(result.winner) == min(spread_of(r) for r in best)
    assert set(result.cluster) <= set(eligible)
    assert result.reached == (result.support >= result.need)
    assert cluster_mask(result).bit_count() == result.support


@FAST
@given(consensus_inputs(), st.randoms(use_true_random=False))
def test_seat_order_changes_only_who_wins_a_tie(
    drawn: tuple[list[RevealBits], int, int, int], shuffler: random.Random
) -> None:
    reveals, quorum, sec_distance_bp, sec_percentage_bp = drawn
    shuffled = list(reveals)
    shuffler.shuffle(shuffled)
    parameters = {
        "quorum": quorum,
        "sec_distance_bp": sec_distance_bp,
        "sec_percentage_bp": sec_percentage_bp,
    }
    before = compute_consensus(reveals, **parameters)
    after = compute_consensus(shuffled, **parameters)
    assert (before.reached, before.support, before.need) == (
        after.reached,
        after.support,
        after.need,
    )


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    cluster_size=st.integers(2, 12),
    scattered=st.integers(0, 12),
    sec_percentage_bp=st.integers(1, 10000),
    noise_bits=st.integers(0, 30),
)
def test_a_planted_cluster_wins_among_scattered_answers(
    seed: int, cluster_size: int, scattered: int, sec_percentage_bp: int, noise_bits: int
) -> None:
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 256, DIM_BYTES, dtype=np.uint8).tobytes()
    members = [
        flipped(centre, *rng.choice(DIM_BITS, noise_bits // 2, replace=False).tolist())
        for _ in range(cluster_size)
    ]
    # random 384-bit strings lie about 192 bits apart (sd 10): far beyond 0.35 * 384 = 134
    others = [rng.integers(0, 256, DIM_BYTES, dtype=np.uint8).tobytes() for _ in range(scattered)]
    labelled = [(bits, True) for bits in members] + [(bits, False) for bits in others]
    order = rng.permutation(len(labelled)).tolist()
    reveals: list[RevealBits] = [(labelled[i][0], False) for i in order]
    planted = tuple(position for position, i in enumerate(order) if labelled[i][1])
    quorum = min(16, len(reveals))
    result = compute_consensus(
        reveals,
        quorum=quorum,
        sec_distance_bp=DEFAULT_SEC_DISTANCE_BP,
        sec_percentage_bp=sec_percentage_bp,
    )
    assert result.cluster == planted
    assert result.winner in planted
    spreads = {p: sum(hamming(reveals[p][0], reveals[q][0]) for q in planted) for p in planted}
    assert spreads[result.winner] == min(spreads.values())
    assert result.winner == min(p for p in planted if spreads[p] == spreads[result.winner])
    assert result.reached == (cluster_size >= required_support(sec_percentage_bp, quorum))


# --- disputes and verification --------------------------------------------------------


@pytest.mark.parametrize(
    ("disputes", "quorum", "excluded"),
    [
        (0, 1, False),  # nobody else can dispute a lone seat
        (1, 2, False),  # at quorum 2 one node cannot exclude the other
        (1, 3, False),
        (2, 3, True),
        (2, 4, False),  # half of the quorum is no strict majority
        (3, 4, True),
        (2, 5, False),  # two liars cannot exclude the other three
        (3, 5, True),
        (8, 16, False),
        (9, 16, True),
    ],
)
def test_dispute_needs_a_strict_majority_of_the_quorum(
    disputes: int, quorum: int, excluded: bool
) -> None:
    assert dispute_excludes(disputes, quorum) is excluded


@FAST
@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_dispute_majority_is_more_than_half_of_the_quorum(drawn: tuple[int, int]) -> None:
    disputes, quorum = drawn
    assert dispute_excludes(disputes, quorum) == (Fraction(disputes) > Fraction(quorum, 2))


@pytest.mark.parametrize(("disputes", "quorum"), [(-1, 3), (3, 3), (0, 0)])
def test_dispute_counts_out_of_range_are_refused(disputes: int, quorum: int) -> None:
    with pytest.raises(InvalidConsensusParameters):
        dispute_excludes(disputes, quorum)


@pytest.mark.parametrize(
    ("embedder_tokens", "model_tokens", "max_tokens", "fault"),
    [
        (256, 48, 48, None),  # exactly the window, exactly maxTokens
        (257, 10, 48, "embedding model"),  # a tail the embedder would not read
        (100, 49, 48, "maxTokens 48"),
        (100, None, 1, None),  # the named model is not here: its count is left to others
    ],
)
def test_length_faults(
    embedder_tokens: int, model_tokens: int | None, max_tokens: int, fault: str | None
) -> None:
    found = length_fault(
        embedder_tokens=embedder_tokens,
        embedder_window=256,
        model_tokens=model_tokens,
        max_tokens=max_tokens,
    )
    if fault is None:
        assert found is None
    else:
        assert found is not None and fault in found


def test_verification_allows_the_tolerance_and_no_more() -> None:
    tolerance = default_verify_tolerance_bits(DIM_BITS)
    assert tolerance == 12
    assert verify_embedding(ZEROS, ZEROS, tolerance)
    assert verify_embedding(ZEROS, flipped(ZEROS, *range(tolerance)), tolerance)
    assert not verify_embedding(ZEROS, flipped(ZEROS, *range(tolerance + 1)), tolerance)
    assert verify_embedding(ZEROS, ZEROS, 0)
    assert not verify_embedding(ZEROS, flipped(ZEROS, 17), 0)


def test_verification_of_bits_of_the_wrong_length_fails() -> None:
    assert not verify_embedding(ZEROS[:-1], ZEROS, 12)
    with pytest.raises(InvalidConsensusParameters):
        verify_embedding(ZEROS, ZEROS, -1)


@pytest.mark.parametrize(
    ("max_margin", "worst_token", "fault"),
    [
        (0.0, 0, None),  # the model's own pick at every token
        (7.99, 3, None),
        (8.0, 3, "8.00, at least 8 logits from its pick at token 3"),  # the margin itself
        (31.5, 0, "31.50, at least 8 logits from its pick at token 0"),
        (None, 2, "at least 8 logits from its pick at token 2"),  # no way of writing it
        (None, None, "at least 8 logits from its pick"),
    ],
)
def test_read_back_faults_from_the_margin_on(
    max_margin: float | None, worst_token: int | None, fault: str | None
) -> None:
    found = read_back_fault(
        model="SmolLM2", max_margin=max_margin, worst_token=worst_token, limit=8.0
    )
    if fault is None:
        assert found is None
    else:
        why = "revealed output is not what SmolLM2 writes for this request's seed"
        assert found == f"{why}: {fault}"


def test_read_back_needs_a_positive_margin() -> None:
    assert DEFAULT_READ_BACK_MARGIN > 0
    for limit in (0.0, -1.0, math.nan):
        with pytest.raises(InvalidConsensusParameters):
            read_back_fault(model="m", max_margin=0.0, worst_token=0, limit=limit)


def test_default_tolerance_is_a_small_share_of_the_bits() -> None:
    assert default_verify_tolerance_bits(8) == 1
    assert default_verify_tolerance_bits(384) == 12
    assert default_verify_tolerance_bits(768) == 24
    # a tenth of the secDistance that separates different answers, or less
    assert default_verify_tolerance_bits(384) * 10000 * 10 <= DEFAULT_SEC_DISTANCE_BP * 384
    with pytest.raises(InvalidConsensusParameters):
        default_verify_tolerance_bits(0)
