"""What a requesting contract asks for: the request and its security frame (DESIGN.md §1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NewType

from oracle.errors import InvalidRecord, InvalidSecurityFrame

__all__ = [
    "MAX_BASIS_POINTS",
    "MAX_QUORUM",
    "MAX_TEMPERATURE_MILLI",
    "InferenceRequest",
    "RequestId",
    "SecurityFrame",
    "utc_from_unix",
]

RequestId = NewType("RequestId", int)
"""The contract's id of a request (a uint256)."""

MAX_BASIS_POINTS = 10_000
MAX_QUORUM = 16
MAX_TEMPERATURE_MILLI = 2_000


def utc_from_unix(seconds: int) -> datetime:
    """The timezone-aware UTC time of a chain timestamp (unix seconds)."""
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class SecurityFrame:
    """How much agreement a request demands, and how fast (the contract's securityFrame)."""

    quorum: int
    """Independent node answers wanted, 1..16; missing answers count against consensus."""
    max_time_ms: int
    """Time for inference and commit."""
    sec_distance_bp: int
    """Largest normalised Hamming distance, in basis points, for two answers to agree."""
    sec_percentage_bp: int
    """Share of the quorum, in basis points, that must sit in the winning cluster."""
    embedding_model: str
    """The sentence-embedding model whose sign bits are compared, e.g. all-MiniLM-L6-v2."""

    def __post_init__(self) -> None:
        _check_frame_range("quorum", self.quorum, 1, MAX_QUORUM)
        _check_frame_range("max_time_ms", self.max_time_ms, 1, 2**32 - 1)
        _check_frame_range("sec_distance_bp", self.sec_distance_bp, 0, MAX_BASIS_POINTS)
        _check_frame_range("sec_percentage_bp", self.sec_percentage_bp, 1, MAX_BASIS_POINTS)
        if not self.embedding_model:
            raise InvalidSecurityFrame(
                field="embedding_model", value=self.embedding_model, allowed="a model name"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class InferenceRequest:
    """One request as the contract stored it (the InferenceRequested event)."""

    request_id: RequestId
    requester: str
    """Address of the contract or account that asked."""
    prompt: str
    accepted_models: tuple[str, ...]
    """Models the requester accepts; a reveal names one by its index here."""
    temperature_milli: int
    """Sampling temperature in thousandths: 700 = 0.7."""
    max_tokens: int
    frame: SecurityFrame
    callback: str | None
    """Consumer contract for onInferenceResult, or None for no callback."""
    callback_gas_limit: int
    fee_wei: int
    """Escrowed fee, paid to the winning cluster or refunded."""
    commit_deadline: datetime
    """Last moment a commit is accepted (timezone-aware)."""
    reveal_deadline: datetime
    """Last moment a reveal is accepted (timezone-aware)."""

    def __post_init__(self) -> None:
        if not self.accepted_models:
            raise InvalidRecord(
                field="accepted_models", value=self.accepted_models, allowed="one model or more"
            )
        if not 0 <= self.temperature_milli <= MAX_TEMPERATURE_MILLI:
            raise InvalidRecord(
                field="temperature_milli",
                value=self.temperature_milli,
                allowed=f"0..{MAX_TEMPERATURE_MILLI}",
            )
        for name, moment in (
            ("commit_deadline", self.commit_deadline),
            ("reveal_deadline", self.reveal_deadline),
        ):
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise InvalidRecord(field=name, value=moment, allowed="timezone-aware datetimes")
        if self.reveal_deadline < self.commit_deadline:
            raise InvalidRecord(
                field="reveal_deadline",
                value=self.reveal_deadline,
                allowed="no earlier than commit_deadline",
            )

    def model_name(self, model_index: int) -> str:
        """The accepted model a reveal's model_index names."""
        if not 0 <= model_index < len(self.accepted_models):
            raise InvalidRecord(
                field="model_index",
                value=model_index,
                allowed=f"0..{len(self.accepted_models) - 1}",
            )
        return self.accepted_models[model_index]


def _check_frame_range(name: str, value: int, lowest: int, highest: int) -> None:
    if not lowest <= value <= highest:
        raise InvalidSecurityFrame(field=name, value=value, allowed=f"{lowest}..{highest}")
