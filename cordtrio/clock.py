"""Wall-clock time for timestamps, tied to Trio's clock so that a ``MockClock`` moves
timestamps and timers together (hours of backoff pass instantly and consistently)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio


class TrioWallClock:
    """``now()`` = the wall time at creation + Trio time elapsed since.

    Under ``trio.testing.MockClock`` timestamps follow virtual time; under the real clock
    they follow real time (drift from NTP adjustments is not followed, by design: timers
    and timestamps can never disagree). Must be created inside ``trio.run``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall0 = (start or datetime.now(UTC)).astimezone(UTC)
        self._trio0 = trio.current_time()

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=trio.current_time() - self._trio0)


class SystemClock:
    """``datetime.now(UTC)``; for code outside Trio."""

    def now(self) -> datetime:
        return datetime.now(UTC)
