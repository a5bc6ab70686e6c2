"""Consensus arithmetic: pure, integer, identical to the contract's (DESIGN.md §3).

See docs/consensus.md for the arithmetic, the defaults and the measurements behind them.
"""

from oracle.consensus.bits import BASIS_POINTS, are_neighbours, hamming, pack_sign_bits
from oracle.consensus.clustering import (
    ConsensusResult,
    RevealBits,
    cluster_mask,
    compute_consensus,
    required_support,
)
from oracle.consensus.verification import (
    DEFAULT_READ_BACK_MARGIN,
    default_verify_tolerance_bits,
    dispute_excludes,
    length_fault,
    read_back_fault,
    verify_embedding,
)

__all__ = [
    "BASIS_POINTS",
    "DEFAULT_READ_BACK_MARGIN",
    "DEFAULT_SEC_DISTANCE_BP",
    "ConsensusResult",
    "RevealBits",
    "are_neighbours",
    "cluster_mask",
    "compute_consensus",
    "default_verify_tolerance_bits",
    "dispute_excludes",
    "hamming",
    "length_fault",
    "pack_sign_bits",
    "read_back_fault",
    "required_support",
    "verify_embedding",
]

DEFAULT_SEC_DISTANCE_BP = 3_500
"""secDistance for short factual answers with all-MiniLM-L6-v2 sign bits: 0.35, i.e. at
most 134 of 384 bits. A compromise, not a separation (docs/consensus.md): at 0.35 honest
short answers of some task types agree in as few as 58 % of pairs, and an answer to
another prompt lands within it in 0-11 % of pairs per task type (up to 19 %)."""
