"""Embedding sign bits and the distance between them (DESIGN.md §3)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from oracle.errors import EmbeddingLengthMismatch, InvalidEmbedding

__all__ = ["BASIS_POINTS", "are_neighbours", "embedding_components", "hamming", "pack_sign_bits"]

BASIS_POINTS = 10_000
"""Basis points in a whole: secDistance and secPercentage are given in these."""


def pack_sign_bits(vector: npt.ArrayLike) -> bytes:
    """The sign bits of an embedding vector, packed most significant bit first.

    Bit i is 1 when component i is strictly positive (0.0 and -0.0 give 0), so
    384 dimensions give 48 bytes; the first component is the top bit of byte 0
    (numpy.packbits order). Normalising the vector first changes nothing.
    """
    return np.packbits(embedding_components(vector) > 0).tobytes()


def embedding_components(vector: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The vector as float64 components that can become sign bits: one dimension, a
    positive multiple of 8 of them, all finite (InvalidEmbedding otherwise)."""
    components = np.asarray(vector, dtype=np.float64)
    if components.ndim != 1:
        raise InvalidEmbedding(reason=f"expected one vector, got shape {components.shape}")
    if components.size == 0 or components.size % 8 != 0:
        raise InvalidEmbedding(
            reason=f"{components.size} dimensions; sign bits need a positive multiple of 8"
        )
    if not np.isfinite(components).all():
        raise InvalidEmbedding(reason="the vector holds NaN or infinite components")
    return components


def hamming(a: bytes, b: bytes) -> int:
    """The number of bits in which two packed embeddings differ: popcount(a XOR b)."""
    if len(a) != len(b):
        raise EmbeddingLengthMismatch(left_bytes=len(a), right_bytes=len(b))
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def are_neighbours(distance: int, sec_distance_bp: int, dim_bits: int) -> bool:
    """Whether two embeddings `distance` bits apart count as the same answer.

    In integers, exactly as the contract does: distance / dim_bits <= secDistance / 10000.
    """
    return distance * BASIS_POINTS <= sec_distance_bp * dim_bits
