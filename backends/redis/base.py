"""The state every part of ``RedisStore`` shares: the connection, the clock and the
insertion ranks of run-hash fields (see ``store.py`` for the key layout).
"""

from __future__ import annotations

import time
from datetime import datetime

from cordtrio.clock import SystemClock
from cordtrio.ports import Clock

from .adapter import RedisAdapter


class RedisStoreBase:
    """Base of the ``RedisStore`` mixins: the ``RedisAdapter``, the clock that stamps the
    timestamps the store fills in, and the rank counter of ``ord:<field>`` entries."""

    def __init__(self, redis: RedisAdapter, *, clock: Clock | None = None) -> None:
        self._redis = redis
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._last_rank = 0

    def _now(self) -> datetime:
        return self._clock.now()

    def _rank(self) -> bytes:
        """A fresh insertion rank: increasing within this process, and across processes as
        far as their wall clocks agree (nanoseconds since the epoch)."""
        self._last_rank = max(self._last_rank + 1, time.time_ns())
        return str(self._last_rank).encode()
