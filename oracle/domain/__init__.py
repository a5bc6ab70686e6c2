"""The records the protocol carries: frozen, typed, free of I/O."""

from oracle.domain.request import (
    MAX_BASIS_POINTS,
    MAX_QUORUM,
    MAX_TEMPERATURE_MILLI,
    InferenceRequest,
    RequestId,
    SecurityFrame,
    utc_from_unix,
)
from oracle.domain.reveal import Reveal

__all__ = [
    "MAX_BASIS_POINTS",
    "MAX_QUORUM",
    "MAX_TEMPERATURE_MILLI",
    "InferenceRequest",
    "RequestId",
    "Reveal",
    "SecurityFrame",
    "utc_from_unix",
]
