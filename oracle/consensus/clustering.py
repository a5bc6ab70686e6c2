"""Who agrees with whom: the clustering the contract runs at finalize (DESIGN.md §3).

Every step is integer arithmetic on the reveals in seat order, so this module and the
contract give the same result bit for bit:

- ``n(r)``: the number of eligible reveals within secDistance of r, r included;
- ``need = ceil(secPercentage * quorum / 10000)``, against the quorum, not the reveals;
- the winner is the **medoid** among the eligible reveals with the largest n(r): the one
  with the smallest sum of distances to its neighbours; then the smaller ticket (the
  seat's stake-weighted draw, which no committer chooses); then the lower seat;
- consensus holds when n(winner) >= need; the cluster is the winner and its neighbours.

Excluded reveals (disputed by a strict majority of the quorum) take no part: they are
neither candidate nor neighbour, and their bits are never read. Eligible bits must be
non-empty and of one length (the contract reverts otherwise; here it raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oracle.consensus.bits import BASIS_POINTS, are_neighbours, hamming
from oracle.domain import Reveal
from oracle.errors import EmbeddingLengthMismatch, InvalidConsensusParameters, InvalidEmbedding

__all__ = [
    "ConsensusResult",
    "RevealBits",
    "cluster_mask",
    "compute_consensus",
    "required_support",
]

RevealBits = tuple[bytes, bool]
"""A reveal reduced to what consensus reads: (embedding_bits, excluded)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsensusResult:
    """The outcome of clustering one request's reveals."""

    reached: bool
    """Whether the winner's support is at least `need`."""
    winner: int | None
    """Index (into the reveals, in seat order) of the medoid of the best-supported
    reveals; None when no reveal was eligible."""
    support: int
    """n(winner): eligible reveals within secDistance of the winner, itself included."""
    need: int
    """ceil(secPercentage * quorum / 10000)."""
    cluster: tuple[int, ...]
    """Indices of the winner and its eligible neighbours, ascending; given whether or not
    consensus was reached, empty when there is no winner."""


def required_support(sec_percentage_bp: int, quorum: int) -> int:
    """ceil(sec_percentage_bp * quorum / 10000), in integers."""
    if sec_percentage_bp < 0:
        raise InvalidConsensusParameters(
            field="sec_percentage_bp", value=sec_percentage_bp, allowed="0 or more"
        )
    if quorum < 0:
        raise InvalidConsensusParameters(field="quorum", value=quorum, allowed="0 or more")
    return (sec_percentage_bp * quorum + BASIS_POINTS - 1) // BASIS_POINTS


def compute_consensus(
    reveals: Sequence[Reveal | RevealBits],
    *,
    quorum: int,
    sec_distance_bp: int,
    sec_percentage_bp: int,
    tickets: Sequence[int] | None = None,
) -> ConsensusResult:
    """Cluster the reveals of one request, given in seat order.

    ``tickets``: each seat's ticket, in seat order (the contract's ``Committed.ticket``);
    None when they play no part (as if equal: a tie then goes to the lower seat).
    """
    _check_parameters(
        quorum=quorum, sec_distance_bp=sec_distance_bp, sec_percentage_bp=sec_percentage_bp
    )
    seat_tickets = [0] * len(reveals) if tickets is None else list(tickets)
    if len(seat_tickets) != len(reveals):
        raise InvalidConsensusParameters(
            field="tickets", value=len(seat_tickets), allowed=f"one per seat ({len(reveals)})"
        )
    need = required_support(sec_percentage_bp, quorum)
    bits, eligible = _eligible_bits(reveals)
    if not eligible:
        return ConsensusResult(reached=False, winner=None, support=0, need=need, cluster=())
    dim_bits = len(bits[eligible[0]]) * 8
    distance = {(i, j): hamming(bits[i], bits[j]) for i in eligible for j in eligible if i < j}

    def between(i: int, j: int) -> int:
        return 0 if i == j else distance[(min(i, j), max(i, j))]

    neighbours = {
        r: tuple(s for s in eligible if are_neighbours(between(r, s), sec_distance_bp, dim_bits))
        for r in eligible
    }

    def rank(r: int) -> tuple[int, int, int, int]:
        """Smaller is better: most neighbours, then the medoid, then ticket, then seat."""
        spread = sum(between(r, s) for s in neighbours[r])
        return (-len(neighbours[r]), spread, seat_tickets[r], r)

    winner = min(eligible, key=rank)
    cluster = neighbours[winner]
    support = len(cluster)
    return ConsensusResult(
        reached=support >= need, winner=winner, support=support, need=need, cluster=cluster
    )


def cluster_mask(result: ConsensusResult) -> int:
    """The cluster as the contract returns it: a uint256 with bit i set for reveal i."""
    mask = 0
    for index in result.cluster:
        mask |= 1 << index
    return mask


def _eligible_bits(reveals: Sequence[Reveal | RevealBits]) -> tuple[list[bytes], list[int]]:
    """Every reveal's bits, and the indices of those not excluded (checked for length)."""
    bits: list[bytes] = []
    eligible: list[int] = []
    for index, reveal in enumerate(reveals):
        if isinstance(reveal, Reveal):
            embedding_bits, excluded = reveal.embedding_bits, reveal.excluded
        else:
            embedding_bits, excluded = reveal
        bits.append(embedding_bits)
        if not excluded:
            eligible.append(index)
    if eligible:
        first = bits[eligible[0]]
        if not first:
            raise InvalidEmbedding(reason="empty embedding bits")
        for index in eligible[1:]:
            if len(bits[index]) != len(first):
                raise EmbeddingLengthMismatch(left_bytes=len(first), right_bytes=len(bits[index]))
    return bits, eligible


def _check_parameters(*, quorum: int, sec_distance_bp: int, sec_percentage_bp: int) -> None:
    if quorum < 1:
        raise InvalidConsensusParameters(field="quorum", value=quorum, allowed="1 or more")
    for field, value in (
        ("sec_distance_bp", sec_distance_bp),
        ("sec_percentage_bp", sec_percentage_bp),
    ):
        if not 0 <= value <= BASIS_POINTS:
            raise InvalidConsensusParameters(field=field, value=value, allowed=f"0..{BASIS_POINTS}")
