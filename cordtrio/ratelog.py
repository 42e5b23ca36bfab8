"""``RateLimitedLog``: a warning that may repeat many times a second (a malformed frame on the
bus, corrupt data met by every scan) is logged at most once per interval per kind; the next
line after a quiet spell says how many were suppressed, so nothing is hidden silently."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_INTERVAL = 60.0
MAX_KEYS = 1024


class RateLimitedLog:
    """At most one record per ``key`` every ``interval`` seconds on ``logger``.

    ``warning(key, msg, *args)`` logs like ``logger.warning`` the first time, then drops the
    same ``key``'s records for ``interval`` seconds, counting them; the first record after
    that carries ``" (N similar suppressed in the last Ss)"``. ``clock`` returns seconds
    (default ``time.monotonic``; pass ``trio.current_time`` to follow a ``MockClock``). At
    most ``MAX_KEYS`` keys are remembered (the oldest is forgotten first)."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = float(interval)
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log (True) or count as suppressed (False)."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self.interval:
            self._windows[key] = (window[0], window[1] + 1)
            return False
        if window is not None and window[1]:
            msg = f"{msg} ({window[1]} similar suppressed in the last {now - window[0]:.0f}s)"
        self._windows[key] = (now, 0)
        self._windows.move_to_end(key)
        while len(self._windows) > MAX_KEYS:
            self._windows.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True

    def suppressed(self, key: str) -> int:
        """Records of ``key`` dropped since the last one logged."""
        window = self._windows.get(key)
        return window[1] if window is not None else 0


_SHARED: dict[tuple[str, float], RateLimitedLog] = {}


def rate_limited(logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> RateLimitedLog:
    """The process-wide ``RateLimitedLog`` of ``logger`` (one per logger and interval)."""
    found = _SHARED.get((logger.name, interval))
    if found is None:
        found = _SHARED[(logger.name, interval)] = RateLimitedLog(logger, interval)
    return found


__all__ = ["DEFAULT_INTERVAL", "RateLimitedLog", "rate_limited"]
