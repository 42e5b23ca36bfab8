"""``TrioWallClock``: wall timestamps that follow Trio's clock, whichever it is."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import trio
import trio.testing

from cordtrio.clock import TrioWallClock, perf_counter_offset


async def test_under_trios_own_clock_it_reads_perf_counter_itself() -> None:
    """Over Trio's ``SystemClock`` (``offset + perf_counter()``) the clock calls
    ``perf_counter`` and adds the offset: the same time as the anchor plus Trio's time
    elapsed since (within the rounding of a float sum and of two roundings to the
    microsecond), and never going back."""
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    clock = TrioWallClock(start)
    trio0 = clock._trio0  # (Trio's time at the anchor)
    assert perf_counter_offset(trio.lowlevel.current_clock()) is not None
    assert clock._trio_now is time.perf_counter
    slack = timedelta(microseconds=2)
    readings = []
    for _ in range(100):
        before = trio.current_time()
        now = clock.now()
        after = trio.current_time()
        readings.append(now)
        assert start + timedelta(seconds=before - trio0) - slack <= now
        assert now <= start + timedelta(seconds=after - trio0) + slack
    assert readings == sorted(readings)


def test_under_a_mock_clock_it_reads_that_clock() -> None:
    """Any other clock (a ``MockClock``) is read as it is: timestamps follow virtual time."""
    start = datetime(2026, 1, 2, tzinfo=UTC)

    async def main() -> None:
        mock = trio.lowlevel.current_clock()
        assert perf_counter_offset(mock) is None
        clock = TrioWallClock(start)
        assert clock.now() == start
        await trio.sleep(3600)
        assert clock.now() == start + timedelta(hours=1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
