"""The commit-reveal hash, exactly as the coordinator recomputes it in ``reveal``, and the
request hash it binds (protocol v2: a reorg that reorders requests cannot move a
commitment from one request's content to another's)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak


def output_hash(output: str) -> bytes:
    return keccak(output.encode("utf-8"))


def commitment_hash(
    *,
    request_id: int,
    request_hash: bytes,
    oracle: str,
    output: str,
    model_index: int,
    embedding_bits: bytes,
    salt: bytes,
) -> bytes:
    """keccak256(abi.encode(id, requestHash, node, keccak256(output), modelIndex,
    embeddingBits, salt)); ``request_hash`` as the ``InferenceRequested`` event gave it."""
    if len(request_hash) != 32:
        raise ValueError(f"request_hash must be 32 bytes, not {len(request_hash)}")
    encoded = encode(
        ["uint256", "bytes32", "address", "bytes32", "uint8", "bytes", "bytes32"],
        [
            request_id,
            request_hash,
            to_checksum_address(oracle),
            output_hash(output),
            model_index,
            embedding_bits,
            salt,
        ],
    )
    return keccak(encoded)


def request_hash(
    *,
    request_id: int,
    requester: str,
    prompt: bytes | str,
    accepted_models: Sequence[bytes | str],
    temperature_milli: int,
    max_tokens: int,
    quorum: int,
    max_time_ms: int,
    sec_distance_bp: int,
    sec_percentage_bp: int,
    embedding_model: bytes | str,
    callback: str | None,
    callback_gas_limit: int,
    callback_gas_price: int,
    fee_wei: int,
    seed: int,
    slash_bps: int,
    dim_bits: int,
    reveal_window_s: int,
    dispute_window_s: int,
    expiry_grace_s: int,
) -> bytes:
    """The coordinator's ``requestHash``, recomputed from a request's fields (nodes take
    it from the event; this is for checking it). Strings as the contract hashes them:
    their UTF-8 bytes, or the raw bytes a log carried. The owner's terms as the request
    fixed them are part of it (``terms.slashBps``, ``terms.dimBits``, and the windows: the
    reveal deadline less the commit deadline, ``disputeWindow``, and ``expiresAt`` less
    both), so that the same request mined again under other terms is another request."""
    models = [_raw(m) for m in accepted_models]
    encoded = encode(
        [
            "uint256", "address", "bytes32", "bytes32", "uint16", "uint32", "uint8", "uint32",
            "uint16", "uint16", "bytes32", "address", "uint32", "uint64", "uint256", "uint256",
            "uint16", "uint16", "uint32", "uint32", "uint32",
        ],
        [
            request_id,
            to_checksum_address(requester),
            keccak(_raw(prompt)),
            keccak(encode(["bytes[]"], [models])),
            temperature_milli,
            max_tokens,
            quorum,
            max_time_ms,
            sec_distance_bp,
            sec_percentage_bp,
            keccak(_raw(embedding_model)),
            to_checksum_address(callback or "0x" + "00" * 20),
            callback_gas_limit,
            callback_gas_price,
            fee_wei,
            seed,
            slash_bps,
            dim_bits,
            reveal_window_s,
            dispute_window_s,
            expiry_grace_s,
        ],
    )  # fmt: skip
    return keccak(encoded)


def _raw(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def new_salt() -> bytes:
    return secrets.token_bytes(32)
