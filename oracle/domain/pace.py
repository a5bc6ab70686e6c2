"""How fast the chain makes blocks, as the listener reads them.

A reveal or a dispute answers what a block said, and must itself land in a block before
a deadline that counts seconds: on a chain of 12 s blocks a 10 s dispute window closes
before the block after the last reveal, and the last revealer can lie undisputed
(docs/security.md, open risk 7). The listener records the time between consecutive
headers it reads; admission asks for windows of a few of the chain's blocks.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["BlockPace"]


class BlockPace:
    """The typical time between consecutive blocks: the median of the last ``window``
    intervals recorded.

    The median, so that a few odd intervals (a devnet idle between transactions, a test
    warping time, one lying header) do not move it. The listener records from its thread
    and admission reads from the node's: both only append to or copy a bounded deque.
    """

    def __init__(self, window: int = 32) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        self._intervals: deque[int] = deque(maxlen=window)

    def record(self, earlier_timestamp: int, later_timestamp: int) -> None:
        """Two consecutive blocks' timestamps (unix seconds); a later block stamped
        earlier counts as no time at all."""
        self._intervals.append(max(0, later_timestamp - earlier_timestamp))

    def interval_s(self) -> float | None:
        """The typical interval in seconds; None until one is recorded."""
        seen = tuple(self._intervals)
        return float(statistics.median(seen)) if seen else None

    def __repr__(self) -> str:
        return f"BlockPace(interval_s={self.interval_s()}, samples={len(self._intervals)})"
