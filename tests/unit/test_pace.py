"""BlockPace: the median of the last intervals between consecutive blocks."""

from __future__ import annotations

import pytest

from oracle.domain.pace import BlockPace


def test_nothing_recorded_says_nothing() -> None:
    assert BlockPace().interval_s() is None


def test_the_median_of_the_last_intervals_ignores_a_few_odd_ones() -> None:
    pace = BlockPace(window=5)
    for earlier, later in [(0, 12), (12, 24), (24, 3624), (3624, 3636), (3636, 3636)]:
        pace.record(earlier, later)  # an hour's warp and a block in the same second
    assert pace.interval_s() == 12
    for second in range(5):  # the chain speeds up: only the last five count
        pace.record(second, second + 2)
    assert pace.interval_s() == 2


def test_a_block_stamped_before_its_parent_counts_as_no_time() -> None:
    """A header's timestamp is the producer's (or a lying endpoint's) word: one stamped
    earlier than the block before it must not make the chain look faster than instant."""
    pace = BlockPace(window=1)
    pace.record(100, 40)
    assert pace.interval_s() == 0


def test_the_window_holds_one_interval_at_least() -> None:
    with pytest.raises(ValueError, match="window"):
        BlockPace(window=0)
