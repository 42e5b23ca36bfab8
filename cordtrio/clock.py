"""Wall-clock time for timestamps, tied to Trio's clock so that a ``MockClock`` moves
timestamps and timers together (hours of backoff pass instantly and consistently)."""

from __future__ import annotations

from datetime import UTC, datetime
from time import perf_counter

import trio

_ANCHOR: trio.lowlevel.RunVar[tuple[datetime, float]] = trio.lowlevel.RunVar("cordtrio_clock")


class TrioWallClock:
    """``now()`` = a wall time anchored once per ``trio.run`` + Trio time elapsed since.

    Every ``TrioWallClock`` in the same ``trio.run`` shares the anchor, so an engine that
    is closed and reopened in a simulation reads the same time as the one before it (its
    stored backoffs and delays fire on time). Under ``trio.testing.MockClock`` timestamps
    follow virtual time; under the real clock they follow real time (NTP adjustments are
    not followed, by design: timers and timestamps never disagree). ``start`` pins the
    anchor of this clock alone. Must be created inside ``trio.run``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        # ``trio.current_time()`` is this clock's reading: asked directly, two frames fewer
        # on every timestamp (an engine takes one per batch of events); over Trio's own
        # clock, ``perf_counter`` itself, its offset added to ``_shift`` below (no frame)
        clock = trio.lowlevel.current_clock()
        offset = perf_counter_offset(clock)
        self._trio_now = clock.current_time if offset is None else perf_counter
        if start is not None:
            self._wall0, self._trio0 = start.astimezone(UTC), trio.current_time()
        else:
            try:
                self._wall0, self._trio0 = _ANCHOR.get()
            except LookupError:
                self._wall0, self._trio0 = datetime.now(UTC), trio.current_time()
                _ANCHOR.set((self._wall0, self._trio0))
        self._ts0 = self._wall0.timestamp()
        # the anchor's POSIX time minus its Trio time: now = this + Trio's time (Trio's
        # time less its clock's offset, when ``_trio_now`` is ``perf_counter``)
        self._shift = self._ts0 - self._trio0 + (offset or 0.0)

    def now(self) -> datetime:
        # ``fromtimestamp`` on a POSIX time: a third of the cost of adding a ``timedelta``
        # to the anchor. Monotonic like Trio's clock (adding a constant float and rounding
        # to the microsecond never go back); within a microsecond of the exact sum.
        return _fromtimestamp(self._shift + self._trio_now(), UTC)


_fromtimestamp = datetime.fromtimestamp


def perf_counter_offset(clock: trio.abc.Clock) -> float | None:
    """How far ``clock`` is ahead of ``time.perf_counter()``, for Trio's own
    ``SystemClock`` (its reading is ``offset + perf_counter()``): a reader of Trio's time
    may call ``perf_counter`` itself, a C function, and add this. None for any other
    clock (a ``MockClock``): read it."""
    cls = type(clock)
    if cls.__name__ == "SystemClock" and cls.__module__.startswith("trio."):
        return clock.offset  # type: ignore[attr-defined, no-any-return]
    return None


class SystemClock:
    """``datetime.now(UTC)``; for code outside Trio."""

    def now(self) -> datetime:
        return datetime.now(UTC)
