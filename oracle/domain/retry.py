"""The one retry delay every part of the node uses: exponential, with a ceiling."""

from __future__ import annotations

__all__ = ["backoff_s"]


def backoff_s(attempts: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """``base_s`` after the first attempt, doubling with each further one, at most ``cap_s``."""
    return float(min(cap_s, base_s * 2 ** min(max(0, attempts - 1), 30)))
