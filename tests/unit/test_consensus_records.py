"""The records consensus reads (oracle.domain) and the errors it raises (oracle.errors)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from oracle.domain import InferenceRequest, RequestId, Reveal, SecurityFrame, utc_from_unix
from oracle.errors import (
    EmbeddingLengthMismatch,
    InvalidEmbedding,
    InvalidRecord,
    InvalidSecurityFrame,
    OracleError,
)

FRAME = SecurityFrame(
    quorum=3,
    max_time_ms=30_000,
    sec_distance_bp=3500,
    sec_percentage_bp=6667,
    embedding_model="all-MiniLM-L6-v2",
)


def request(**changes: object) -> InferenceRequest:
    commit_deadline = utc_from_unix(1_800_000_000)
    fields: dict[str, object] = {
        "request_id": RequestId(7),
        "requester": "0x" + "ab" * 20,
        "prompt": "What is the capital of France?",
        "accepted_models": ("SmolLM2-135M-Instruct-Q4_1",),
        "temperature_milli": 700,
        "max_tokens": 64,
        "frame": FRAME,
        "callback": None,
        "callback_gas_limit": 0,
        "fee_wei": 10**15,
        "commit_deadline": commit_deadline,
        "reveal_deadline": commit_deadline + timedelta(seconds=60),
    }
    fields.update(changes)
    return InferenceRequest(**fields)  # type: ignore[arg-type]


def test_records_are_frozen_keyword_only_and_slotted() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FRAME.quorum = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        SecurityFrame(3, 30_000, 3500, 6667, "all-MiniLM-L6-v2")  # type: ignore[call-arg]
    assert not hasattr(FRAME, "__dict__")
    assert dataclasses.replace(FRAME, quorum=5).quorum == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quorum", 0),
        ("quorum", 17),
        ("max_time_ms", 0),
        ("sec_distance_bp", 10_001),
        ("sec_percentage_bp", 0),
        ("sec_percentage_bp", 10_001),
        ("embedding_model", ""),
    ],
)
def test_security_frame_out_of_range_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidSecurityFrame) as raised:
        dataclasses.replace(FRAME, **{field: value})  # type: ignore[arg-type]
    assert raised.value.field == field
    assert raised.value.value == value
    assert str(raised.value).startswith("A security frame is out of the protocol's range: ")


def test_deadlines_are_timezone_aware() -> None:
    assert request().commit_deadline == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    with pytest.raises(InvalidRecord, match="timezone-aware"):
        request(commit_deadline=datetime(2027, 1, 15, 8, 0))
    with pytest.raises(InvalidRecord, match="reveal_deadline"):
        request(reveal_deadline=utc_from_unix(1_700_000_000))


def test_request_fields_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidRecord, match="accepted_models"):
        request(accepted_models=())
    with pytest.raises(InvalidRecord, match="temperature_milli"):
        request(temperature_milli=2001)


def test_model_index_names_an_accepted_model() -> None:
    two = request(accepted_models=("a", "b"))
    assert two.model_name(1) == "b"
    with pytest.raises(InvalidRecord, match="model_index"):
        two.model_name(2)


def test_reveal_refuses_negative_indices() -> None:
    Reveal(seat=0, oracle="0x0", output="", model_index=0, embedding_bits=b"")
    with pytest.raises(InvalidRecord, match="seat"):
        Reveal(seat=-1, oracle="0x0", output="", model_index=0, embedding_bits=b"")


def test_errors_read_their_docstring_and_carry_their_data() -> None:
    assert str(OracleError()) == "The oracle failed"
    error = EmbeddingLengthMismatch(left_bytes=48, right_bytes=47)
    assert str(error) == "Two embeddings differ in length: 48 bytes against 47 bytes"
    assert isinstance(error, InvalidEmbedding) and isinstance(error, OracleError)
    assert (error.left_bytes, error.right_bytes) == (48, 47)
