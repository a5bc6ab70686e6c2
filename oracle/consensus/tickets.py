"""Seat tickets: which committers hold a request's seats (protocol v2, docs/security.md).

Every node that commits to a request draws a ticket from the request's seed, the request
id and its own address, divided by its stake; the ``quorum`` smallest tickets among the
commits hold the seats when commits close. Nobody can grind a ticket: the seed is
``block.prevrandao`` of the request's block, and only nodes registered before that block
may commit. Arrival order decides nothing, except between two equal tickets (the earlier
committer keeps its seat).

In floating point the ticket is ``-log2(u) / stake`` with ``u`` uniform in (0, 1]: an
exponential clock whose rate is the stake (Efraimidis-Spirakis keys in log form), so the
best ticket belongs to a node with probability equal to its share of the committed stake
whatever way an operator splits that stake, and the ``quorum`` smallest tickets are a
stake-weighted sample without replacement. Here it is computed in integers exactly as the
contract's ``ConsensusLib.ticket`` does, bit for bit:

- ``h = uint256(keccak256(abi.encode(seed, requestId, node)))``
- ``x = (h >> 192) + 1`` (``1 <= x <= 2**64``; ``u = x / 2**64``)
- ``neglog = (64 << 64) - log2_64x64(x)`` (``-log2(u)`` in 64.64 fixed point)
- ``ticket = (neglog << 64) // stake`` (stake in wei)

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak

from oracle.errors import InvalidConsensusParameters

__all__ = [
    "FRACTION_BITS",
    "MAX_VARIATE",
    "Seat",
    "log2_64x64",
    "neg_log2_64x64",
    "seat_holders",
    "ticket",
    "ticket_for_stake",
    "ticket_variate",
]

FRACTION_BITS = 64
"""Fraction bits of the 64.64 fixed-point numbers the tickets are built from."""

MAX_VARIATE = 1 << 64
"""The largest variate ``x``; ``x / MAX_VARIATE`` is the uniform draw ``u`` in (0, 1]."""

_TWO = 2 << FRACTION_BITS
_WORD = 1 << 256


def _word(value: int, what: str) -> bytes:
    if not 0 <= value < _WORD:
        raise InvalidConsensusParameters(field=what, value=value, allowed="a uint256")
    return value.to_bytes(32, "big")


def _address_word(node: str | bytes) -> bytes:
    """An address as ``abi.encode`` lays it out: 12 zero bytes, then its 20 bytes."""
    raw = node if isinstance(node, bytes) else to_canonical_address(node)
    if len(raw) != 20:
        raise InvalidConsensusParameters(field="node", value=node, allowed="a 20-byte address")
    return bytes(12) + raw


def ticket_variate(seed: int, request_id: int, node: str | bytes) -> int:
    """``x = (keccak256(abi.encode(seed, request_id, node)) >> 192) + 1``: 1..2**64.

    ``node`` is a hex address (any case) or its 20 bytes.
    """
    encoded = _word(seed, "seed") + _word(request_id, "request_id") + _address_word(node)
    return (int.from_bytes(keccak(encoded), "big") >> 192) + 1


def log2_64x64(x: int) -> int:
    """``floor(log2(x) * 2**64)`` for ``1 <= x <= 2**64``, exactly as the contract computes it.

    The integer part is the index of the top bit; the 64 fraction bits come one at a time
    by squaring the mantissa (64.64, in [1, 2)): a square of 2 or more means the next bit
    of the logarithm is 1, and the mantissa is halved. Every square is truncated to 64
    fraction bits, so the result can fall a few units of 2**-64 short of the true floor
    (tests/unit/test_tickets.py bounds it); the contract truncates identically.
    """
    if not 1 <= x <= MAX_VARIATE:
        raise InvalidConsensusParameters(field="x", value=x, allowed=f"1..{MAX_VARIATE}")
    whole = x.bit_length() - 1
    result = whole << FRACTION_BITS
    mantissa = (x << FRACTION_BITS) >> whole
    bit = 1 << (FRACTION_BITS - 1)
    while bit:
        mantissa = (mantissa * mantissa) >> FRACTION_BITS
        if mantissa >= _TWO:
            mantissa >>= 1
            result += bit
        bit >>= 1
    return result


def neg_log2_64x64(x: int) -> int:
    """``-log2(x / 2**64)`` in 64.64: ``(64 << 64) - log2_64x64(x)``; 0 when ``x = 2**64``."""
    return (FRACTION_BITS << FRACTION_BITS) - log2_64x64(x)


def ticket_for_stake(neg_log: int, stake: int) -> int:
    """``(neg_log << 64) // stake``: the ticket once ``neg_log2_64x64`` is known.

    Split out so that a simulation can reuse one node's ``neg_log`` under several stakes.
    """
    if stake <= 0:
        raise InvalidConsensusParameters(field="stake", value=stake, allowed="1 wei or more")
    return (neg_log << FRACTION_BITS) // stake


def ticket(seed: int, request_id: int, node: str | bytes, stake: int) -> int:
    """The node's ticket for the request (smaller is better), as ``ConsensusLib.ticket``."""
    variate = ticket_variate(seed, request_id, node)
    return ticket_for_stake(neg_log2_64x64(variate), stake)


@dataclass(frozen=True, slots=True, kw_only=True)
class Seat:
    """A seat of a request: who holds it and with which ticket."""

    node: str
    ticket: int


def seat_holders(commits: Iterable[tuple[str, int]], quorum: int) -> tuple[Seat, ...]:
    """The seats once commits close, from ``(node, ticket)`` pairs in commit order.

    The contract's rule, step by step: while seats are free a commit takes the next one;
    when they are full it replaces the seat with the worst (largest) ticket if its own is
    strictly smaller (among equal worst tickets, the highest seat index goes, as the
    contract's ``_worstSeat`` scans), otherwise it is refused (``TicketTooWeak``). So the
    seats end up holding the ``quorum`` smallest tickets, and between equal tickets the
    earlier committer keeps its seat.
    """
    if quorum < 1:
        raise InvalidConsensusParameters(field="quorum", value=quorum, allowed="1 or more")
    seats: list[Seat] = []
    for node, node_ticket in commits:
        if len(seats) < quorum:
            seats.append(Seat(node=node, ticket=node_ticket))
            continue
        worst = max(range(quorum), key=lambda index: (seats[index].ticket, index))
        if node_ticket < seats[worst].ticket:
            seats[worst] = Seat(node=node, ticket=node_ticket)
    return tuple(seats)
