"""Who agrees with whom: the clustering the contract runs at finalize (DESIGN.md §3).

Every step is integer arithmetic on the reveals in seat order, so this module and the
contract give the same result bit for bit:

- ``n(r)``: the number of eligible reveals within secDistance of r, r included;
- ``need = ceil(secPercentage * quorum / 10000)``, against the quorum, not the reveals;
- the winner is the eligible reveal with the largest n(r), the earliest seat on a tie;
- consensus holds when n(winner) >= need; the cluster is the winner and its neighbours.

Excluded reveals (disputed by a majority) take no part: they are neither candidate nor
neighbour.
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
    """Index (into the reveals, in seat order) of the reveal with the most support;
    None when no reveal was eligible."""
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
) -> ConsensusResult:
    """Cluster the reveals of one request, given in seat order."""
    _check_parameters(
        quorum=quorum, sec_distance_bp=sec_distance_bp, sec_percentage_bp=sec_percentage_bp
    )
    need = required_support(sec_percentage_bp, quorum)
    bits, eligible = _eligible_bits(reveals)
    if not eligible:
        return ConsensusResult(reached=False, winner=None, support=0, need=need, cluster=())
    dim_bits = len(bits[eligible[0]]) * 8

    def neighbours_of(candidate: int) -> tuple[int, ...]:
        return tuple(
            other
            for other in eligible
            if are_neighbours(hamming(bits[candidate], bits[other]), sec_distance_bp, dim_bits)
        )

    winner, cluster = eligible[0], neighbours_of(eligible[0])
    for candidate in eligible[1:]:
        candidate_cluster = neighbours_of(candidate)
        if len(candidate_cluster) > len(cluster):  # strictly more: ties stay with the earlier seat
            winner, cluster = candidate, candidate_cluster
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
