"""Seat tickets (protocol v2): the fixed-point log2, the ticket formula and the seat rule."""

from __future__ import annotations

import math
import random
from decimal import Decimal, localcontext

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from oracle.consensus.tickets import (
    MAX_VARIATE,
    Seat,
    log2_64x64,
    neg_log2_64x64,
    seat_holders,
    ticket,
    ticket_for_stake,
    ticket_variate,
)
from oracle.errors import InvalidConsensusParameters

ONE = 1 << 64
TOLERANCE = Decimal(2) ** -60
UINT128_MAX = (1 << 128) - 1
EDGE_VARIATES = [
    1,
    2,
    3,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    (1 << 63) - 1,
    1 << 63,
    (1 << 63) + 1,
    MAX_VARIATE - 1,
    MAX_VARIATE,
]
NODE = "0x00000000000000000000000000000000000000A1"


def exact_log2(x: int) -> Decimal:
    """log2(x) to 70 significant digits: far below the 2**-60 (1e-18) under test."""
    with localcontext() as context:
        context.prec = 70
        return Decimal(x).ln() / Decimal(2).ln()


def variates(count: int, seed: int) -> list[int]:
    """Random variates, spread over every magnitude (uniform x would almost all be ~2**63)."""
    rng = random.Random(seed)
    drawn = [rng.randrange(1, MAX_VARIATE + 1) for _ in range(count // 2)]
    for _ in range(count - len(drawn)):
        bits = rng.randrange(1, 65)
        drawn.append(rng.randrange(1 << (bits - 1), min(1 << bits, MAX_VARIATE) + 1))
    return drawn


# --- log2 in 64.64 ------------------------------------------------------------------------


def test_log2_is_within_2_to_the_minus_60_of_the_exact_value() -> None:
    """Against a 70-digit reference: math.log2 cannot resolve 2**-60 (a double near 64
    has steps of 2**-46), so it only has to agree as far as a double can tell."""
    for x in EDGE_VARIATES + variates(1_500, seed=8):
        value = Decimal(log2_64x64(x)) / ONE
        assert abs(value - exact_log2(x)) <= TOLERANCE, x
        assert math.isclose(log2_64x64(x) / ONE, math.log2(x), rel_tol=2**-50, abs_tol=2**-50)


def test_log2_never_exceeds_the_exact_value() -> None:
    """The squarings truncate, so the result is at or below floor(log2(x) * 2**64)."""
    for x in EDGE_VARIATES + variates(500, seed=9):
        assert log2_64x64(x) <= math.floor(exact_log2(x) * ONE), x


@pytest.mark.parametrize("power", range(65))
def test_log2_of_a_power_of_two_is_exact(power: int) -> None:
    assert log2_64x64(1 << power) == power << 64


def test_log2_edges() -> None:
    assert log2_64x64(1) == 0
    assert log2_64x64(MAX_VARIATE) == 64 << 64
    assert neg_log2_64x64(MAX_VARIATE) == 0
    assert neg_log2_64x64(1) == 64 << 64
    # log2(3) * 2**64 = 29237397617229858719.625...: the squarings land on its floor
    assert log2_64x64(3) == 29237397617229858719


def test_log2_is_monotone() -> None:
    """A larger variate never gets a smaller log (so never a better ticket)."""
    for x in variates(2_000, seed=10):
        if x < MAX_VARIATE:
            assert log2_64x64(x) <= log2_64x64(x + 1), x
    ordered = sorted(variates(2_000, seed=11))
    logs = [log2_64x64(x) for x in ordered]
    assert logs == sorted(logs)


@pytest.mark.parametrize("x", [0, -1, MAX_VARIATE + 1, 1 << 200])
def test_log2_refuses_what_no_hash_gives(x: int) -> None:
    with pytest.raises(InvalidConsensusParameters):
        log2_64x64(x)


# --- the ticket -----------------------------------------------------------------------------


def test_variate_is_the_top_64_bits_of_the_abi_encoded_hash_plus_one() -> None:
    rng = random.Random(12)
    for _ in range(200):
        seed, request_id = rng.getrandbits(256), rng.getrandbits(rng.choice([8, 64, 256]))
        node = "0x" + rng.getrandbits(160).to_bytes(20, "big").hex()
        digest = keccak(abi_encode(["uint256", "uint256", "address"], [seed, request_id, node]))
        expected = (int.from_bytes(digest, "big") >> 192) + 1
        assert ticket_variate(seed, request_id, node) == expected
        assert ticket_variate(seed, request_id, node.upper().replace("0X", "0x")) == expected
        assert ticket_variate(seed, request_id, bytes.fromhex(node[2:])) == expected
        assert 1 <= expected <= MAX_VARIATE


def test_ticket_is_the_spec_formula() -> None:
    seed, request_id = 2**255 + 12345, 7
    x = ticket_variate(seed, request_id, NODE)
    for stake in (1, 10**16, 10**18, 32 * 10**18, UINT128_MAX):
        expected = (((64 << 64) - log2_64x64(x)) << 64) // stake
        assert ticket(seed, request_id, NODE, stake) == expected


def test_stake_of_one_wei_gives_the_whole_negative_log() -> None:
    assert ticket_for_stake(neg_log2_64x64(1), 1) == (64 << 64) << 64  # the worst ticket
    assert ticket_for_stake(neg_log2_64x64(MAX_VARIATE), 1) == 0  # the best one


def test_huge_stake_still_orders_tickets() -> None:
    """At uint128's largest stake a ticket is at most 64: coarse, never negative."""
    worst = ticket_for_stake(neg_log2_64x64(1), UINT128_MAX)
    assert worst == ((64 << 128) // UINT128_MAX) == 64
    assert ticket_for_stake(neg_log2_64x64(1 << 32), UINT128_MAX) == 32
    assert ticket_for_stake(neg_log2_64x64(MAX_VARIATE), UINT128_MAX) == 0


def test_more_stake_never_worsens_a_ticket() -> None:
    for x in variates(200, seed=13):
        neg_log = neg_log2_64x64(x)
        tickets = [ticket_for_stake(neg_log, stake) for stake in (1, 2, 10**18, 2 * 10**18)]
        assert tickets == sorted(tickets, reverse=True)


@pytest.mark.parametrize("stake", [0, -1])
def test_no_ticket_without_stake(stake: int) -> None:
    with pytest.raises(InvalidConsensusParameters):
        ticket(1, 1, NODE, stake)


@pytest.mark.parametrize(
    ("seed", "request_id", "node"),
    [(-1, 1, NODE), (1 << 256, 1, NODE), (1, -1, NODE), (1, 1, b"\x01" * 19)],
)
def test_inputs_outside_the_abi_types_are_refused(
    seed: int, request_id: int, node: str | bytes
) -> None:
    with pytest.raises(InvalidConsensusParameters):
        ticket_variate(seed, request_id, node)


# --- the seats ------------------------------------------------------------------------------


def test_seats_hold_the_smallest_tickets_whatever_the_order() -> None:
    commits = [("a", 50), ("b", 10), ("c", 40), ("d", 30), ("e", 20)]
    for order in (commits, commits[::-1], sorted(commits, key=lambda c: c[1])):
        seats = seat_holders(order, quorum=3)
        assert sorted(seat.node for seat in seats) == ["b", "d", "e"]


def test_a_better_ticket_evicts_the_worst_seat_in_place() -> None:
    seats = seat_holders([("a", 5), ("b", 9), ("c", 7), ("d", 6)], quorum=3)
    assert seats == (Seat(node="a", ticket=5), Seat(node="d", ticket=6), Seat(node="c", ticket=7))


def test_an_equal_ticket_does_not_evict_the_earlier_committer() -> None:
    seats = seat_holders([("a", 5), ("b", 9), ("late", 9)], quorum=2)
    assert [seat.node for seat in seats] == ["a", "b"]


def test_equal_worst_tickets_lose_the_highest_seat_first() -> None:
    seats = seat_holders([("a", 9), ("b", 9), ("c", 1)], quorum=2)
    assert [seat.node for seat in seats] == ["a", "c"]


def test_fewer_commits_than_seats() -> None:
    assert [seat.node for seat in seat_holders([("a", 3)], quorum=5)] == ["a"]
    assert seat_holders([], quorum=5) == ()
    with pytest.raises(InvalidConsensusParameters):
        seat_holders([("a", 3)], quorum=0)


# --- stake-weighted draws -------------------------------------------------------------------


def node_address(index: int) -> bytes:
    return keccak(index.to_bytes(32, "big"))[:20]


def within(observed: int, trials: int, probability: float) -> bool:
    """Whether a count is within 4.5 standard errors of the expectation (a seeded draw)."""
    sigma = math.sqrt(trials * probability * (1 - probability))
    return abs(observed - trials * probability) <= 4.5 * sigma


def test_twice_the_stake_wins_a_single_seat_twice_as_often() -> None:
    """Quorum 1, stakes 2:1:1 (ether): the first node's seat probability is 1/2, the
    others' 1/4 each; and two addresses of 1 ether together win as often as one of 2."""
    stakes = [2 * 10**18, 10**18, 10**18]
    trials = 6_000
    rng = random.Random(20_240_808)
    wins = [0, 0, 0]
    for _ in range(trials):
        seed, request_id = rng.getrandbits(256), rng.getrandbits(64)
        tickets = [
            ticket(seed, request_id, node_address(i), stake) for i, stake in enumerate(stakes)
        ]
        wins[tickets.index(min(tickets))] += 1
    assert within(wins[0], trials, 0.5), wins
    assert within(wins[1], trials, 0.25), wins
    assert within(wins[2], trials, 0.25), wins
    # the ratio itself: 2 within the spread its parts allow (delta method, 4.5 sigma)
    ratio = wins[0] / wins[1]
    ratio_sigma = 2 * math.sqrt(0.5 / (trials * 0.5) + 0.75 / (trials * 0.25))
    assert abs(ratio - 2) <= 4.5 * ratio_sigma, wins


def test_seats_are_a_stake_weighted_sample_without_replacement() -> None:
    """Quorum 2, stakes 3:1:1:1: the big node is seated with probability
    3/6 + 3 * (1/6) * (3/5) = 0.8 (first pick, or second after a small one), as
    successive stake-weighted draws give; a small node with (2 - 0.8) / 3 = 0.4."""
    stakes = [3 * 10**18, 10**18, 10**18, 10**18]
    trials = 5_000
    rng = random.Random(7)
    seated = [0, 0, 0, 0]
    for _ in range(trials):
        seed, request_id = rng.getrandbits(256), rng.getrandbits(64)
        commits = [
            (str(i), ticket(seed, request_id, node_address(i), stake))
            for i, stake in enumerate(stakes)
        ]
        for seat in seat_holders(commits, quorum=2):
            seated[int(seat.node)] += 1
    assert within(seated[0], trials, 0.8), seated
    for small in seated[1:]:
        assert within(small, trials, 0.4), seated
