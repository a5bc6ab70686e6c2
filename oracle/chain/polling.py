"""What the listener's and the sender's loops share: backoff and a stop-aware sleep."""

from __future__ import annotations

import asyncio
import contextlib

from oracle.errors import RpcRateLimited

__all__ = ["backoff_delay", "sleep_unless_stopped"]

MAX_BACKOFF_S = 60.0


def backoff_delay(exc: BaseException, base_s: float, failures: int) -> float:
    """Exponential backoff from ``base_s`` (at most a minute), or what a rate limit asked."""
    if isinstance(exc, RpcRateLimited) and exc.retry_after_s is not None:
        return min(MAX_BACKOFF_S, exc.retry_after_s)
    return float(min(MAX_BACKOFF_S, max(base_s, 0.05) * 2 ** min(failures, 10)))


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, returning early once ``stop`` is set."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
