"""What the listener's and the sender's loops share: backoff and a stop-aware sleep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from oracle.domain.retry import backoff_s
from oracle.errors import RpcError, RpcRateLimited

__all__ = ["backoff_delay", "poll_until_stopped", "sleep_unless_stopped"]

logger = logging.getLogger(__name__)

TRANSIENT = (RpcError, OperationalError)
"""Failures a loop waits out: the RPC endpoint or the database is away for a while."""

MAX_BACKOFF_S = 60.0
LOOP_MAX_BACKOFF_S = 8.0
"""The longest a polling loop waits after its own failures. A request has tens of seconds
to commit: a loop that backs off for a minute after a run of unlucky calls (one RPC in a
sync fails, the whole sync fails) misses it. The endpoints themselves are spared by the
failover provider's rests; a rate limit's own delay is honoured up to a minute."""


def backoff_delay(
    exc: BaseException, base_s: float, failures: int, cap_s: float = MAX_BACKOFF_S
) -> float:
    """Exponential backoff from ``base_s`` up to ``cap_s``, or what a rate limit asked."""
    if isinstance(exc, RpcRateLimited) and exc.retry_after_s is not None:
        return min(MAX_BACKOFF_S, exc.retry_after_s)
    return backoff_s(failures + 1, max(base_s, 0.05), cap_s)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, returning early once ``stop`` is set."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def poll_until_stopped(
    stop: asyncio.Event,
    step: Callable[[], object],
    *,
    poll_interval: float,
    what: str,
    next_delay: Callable[[], float] | None = None,
) -> None:
    """Run the blocking ``step`` in a thread until ``stop``; transient failures back off.

    ``next_delay`` says how long to wait after a good step (``poll_interval`` without it).
    """
    failures = 0
    while not stop.is_set():
        try:
            await asyncio.to_thread(step)
        except TRANSIENT as exc:
            failures += 1
            delay = backoff_delay(exc, poll_interval, failures, LOOP_MAX_BACKOFF_S)
            logger.warning(
                f"{what} failed; retrying",
                extra={"error": str(exc), "failures": failures, "retry_in_s": delay},
            )
        else:
            failures = 0
            delay = next_delay() if next_delay is not None else poll_interval
        await sleep_unless_stopped(stop, delay)
