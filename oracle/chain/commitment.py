"""The commit-reveal hash, exactly as the coordinator recomputes it in ``reveal``."""

from __future__ import annotations

import secrets

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak


def output_hash(output: str) -> bytes:
    return keccak(output.encode("utf-8"))


def commitment_hash(
    *,
    request_id: int,
    oracle: str,
    output: str,
    model_index: int,
    embedding_bits: bytes,
    salt: bytes,
) -> bytes:
    """keccak256(abi.encode(id, node, keccak256(output), modelIndex, embeddingBits, salt))."""
    encoded = encode(
        ["uint256", "address", "bytes32", "uint8", "bytes", "bytes32"],
        [
            request_id,
            to_checksum_address(oracle),
            output_hash(output),
            model_index,
            embedding_bits,
            salt,
        ],
    )
    return keccak(encoded)


def new_salt() -> bytes:
    return secrets.token_bytes(32)
