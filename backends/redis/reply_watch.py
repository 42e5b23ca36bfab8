"""The reply timeout of the batcher's round trips, kept on the asyncio side.

The batcher's senders are long-lived asyncio tasks (``batcher.py``), so a batch's round trip
has no Trio scope of its own to time it out. ``ReplyWatch`` cancels its sender's round trip
that got no reply within ``timeout`` seconds: redis-py then drops the connection (whose late
reply would otherwise reach the next batch) and the round trip fails with ``TimeoutError``.

One asyncio timer per sender, set again lazily, rather than one per round trip: arming and
cancelling a timer per batch (trio-asyncio's timer queue) cost a sizeable share of a small
batch. The timer is set for the round trip in flight when it is armed; when it fires for a
round trip that has since ended, it is set for the one in flight then (if any), so each
round trip still times out ``timeout`` seconds after it started.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

CURRENT: ContextVar[ReplyWatch | None] = ContextVar("cordtrio_redis_reply_watch", default=None)
"""The watch of the sender running in this asyncio task (each sender sets its own)."""


class ReplyWatch:
    """Times out the round trips of one asyncio task (``start``/``stop`` around each)."""

    __slots__ = ("_loop", "_started", "_task", "_timer", "expired", "timeout")

    def __init__(self, loop: Any, task: asyncio.Task[Any], timeout: float) -> None:
        self._loop = loop
        self._task = task
        self.timeout = timeout
        self._started: float | None = None
        self._timer: Any = None
        self.expired = False
        """Set when the watch cancelled the task: the ``CancelledError`` is a timeout."""

    def start(self) -> None:
        """A round trip starts now."""
        self._started = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self.timeout, self._check)

    def stop(self) -> None:
        """The round trip is over (replied or failed)."""
        self._started = None

    def timed_out(self) -> bool:
        """Was the task's ``CancelledError`` this watch's doing? (Then it is taken back:
        the task goes on with its next round trip.)"""
        if not self.expired:
            return False
        self.expired = False
        self._task.uncancel()
        return True

    def close(self) -> None:
        """No more round trips: drop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        started = self._started
        if started is None:
            return  # idle: armed again by the next round trip
        due = started + self.timeout
        if self._loop.time() >= due:
            self.expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)


__all__ = ["CURRENT", "ReplyWatch"]
