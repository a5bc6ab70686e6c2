"""How well a secDistance separates answers that agree from answers that do not.

Pure arithmetic over packed sign bits, shared by ``oracle calibrate`` and
``bench/consensus.py``: the share of pairs of answers within a threshold, the smallest
threshold that lets a wanted share of honest pairs agree, and the share of a quorum that
honest answers reach in one cluster. Thresholds are basis points, compared exactly as
the contract compares them (``are_neighbours``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from oracle.consensus.bits import BASIS_POINTS, are_neighbours, hamming
from oracle.consensus.clustering import compute_consensus
from oracle.errors import InvalidConsensusParameters

__all__ = [
    "cluster_share",
    "cross_distances",
    "pair_distances",
    "share_within",
    "smallest_sec_distance",
]


def pair_distances(bits: Sequence[bytes]) -> list[int]:
    """Hamming distances of every unordered pair of embeddings (i < j)."""
    return [hamming(a, b) for a, b in itertools.combinations(bits, 2)]


def cross_distances(left: Sequence[bytes], right: Sequence[bytes]) -> list[int]:
    """Hamming distances of every pair with one embedding from each side."""
    return [hamming(a, b) for a in left for b in right]


def share_within(distances: Iterable[int], sec_distance_bp: int, dim_bits: int) -> float:
    """The share of distances that count as neighbours at sec_distance_bp (0.0 when none)."""
    values = list(distances)
    if not values:
        return 0.0
    inside = sum(are_neighbours(d, sec_distance_bp, dim_bits) for d in values)
    return inside / len(values)


def smallest_sec_distance(
    distances: Iterable[int], dim_bits: int, *, target: float, step_bp: int = 50
) -> int:
    """The smallest multiple of step_bp at which at least ``target`` of the pairs agree.

    ``target`` is a share (0.95 = 95 % of pairs); no distances need no distance (0).
    """
    if not 0.0 <= target <= 1.0:
        raise InvalidConsensusParameters(field="target", value=target, allowed="0.0..1.0")
    if step_bp < 1:
        raise InvalidConsensusParameters(field="step_bp", value=step_bp, allowed="1 or more")
    values = sorted(distances)
    if not values:
        return 0
    for sec_distance_bp in range(0, BASIS_POINTS + step_bp, step_bp):
        if share_within(values, min(sec_distance_bp, BASIS_POINTS), dim_bits) >= target:
            return min(sec_distance_bp, BASIS_POINTS)
    return BASIS_POINTS


def cluster_share(bits: Sequence[bytes], sec_distance_bp: int) -> float:
    """The share of the answers in the largest cluster (the winner and its neighbours)
    when they are one request's reveals and the quorum is their number."""
    if not bits:
        return 0.0
    result = compute_consensus(
        [(b, False) for b in bits],
        quorum=len(bits),
        sec_distance_bp=sec_distance_bp,
        sec_percentage_bp=0,
    )
    return result.support / len(bits)
