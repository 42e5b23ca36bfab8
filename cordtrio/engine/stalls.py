"""The engine's watchdog for API calls whose run task does not answer (``STALL_PROBE_SEC``).

An API call waits until its run task has applied its envelope. A task that takes longer than
``STALL_PROBE_SEC`` is usually retrying a store that is down: then one cheap store read
tells, and if the store fails too the caller gets its ``StoreError`` (naming the store)
instead of waiting for as long as the outage lasts. The task keeps the envelope and applies
it once the store is back (unless the engine stops first).

One watchdog task per engine does this for every waiting call (one probe for all the calls
stalled at that moment), so a call itself opens no cancel scope: it registers, waits, and
unregisters. The watchdog sleeps only while some call waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..errors import StoreError
from .envelopes import Reply

STALL_PROBE_SEC = 1.0
"""An API call whose event is not applied after this long checks that the store answers."""


class StallWatch:
    """Probes the store for API calls waiting longer than ``period`` (see the module
    docstring); ``probe`` is the cheap store read."""

    def __init__(self, probe: Callable[[], Awaitable[object]],
                 period: float = STALL_PROBE_SEC) -> None:
        self._probe = probe
        self._period = period
        # each waiting call: when to check on it, its run, and its event (named in the
        # error only: a tuple, not an object, for every API call)
        self._calls: dict[Reply, tuple[float, str, object]] = {}
        self._idle = trio.lowlevel.ParkingLot()
        # Trio's clock, asked directly (set by ``run``): ``trio.current_time()`` costs two
        # frames more on every API call
        self._now: Callable[[], float] = trio.current_time

    def watch(self, reply: Reply, run_id: str, event: object) -> None:
        """Watch the caller waiting on ``reply`` for ``event`` to be applied to its run
        (until ``forget``)."""
        calls = self._calls
        if not calls:
            self._idle.unpark_all()
        calls[reply] = (self._now() + self._period, run_id, event)

    def forget(self, reply: Reply) -> None:
        self._calls.pop(reply, None)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._now = trio.lowlevel.current_clock().current_time
        task_status.started()
        calls = self._calls
        while True:
            if not calls:
                await self._idle.park()
                continue
            await trio.sleep_until(min(call[0] for call in calls.values()))
            now = trio.current_time()
            stalled = [(r, c) for r, c in calls.items() if c[0] <= now]
            if not stalled:
                continue
            try:
                await self._probe()
            except Exception as exc:
                for reply, (_, run_id, event) in stalled:
                    if calls.pop(reply, None) is None or reply.is_set():
                        continue
                    if isinstance(exc, StoreError):
                        error: Exception = StoreError(
                            f"run {run_id}: {type(event).__name__} not confirmed, the store "
                            f"is not answering: {exc}")
                        error.__cause__ = exc
                    else:
                        error = exc
                    reply.interrupt(error)
            else:
                for reply, (_, run_id, event) in stalled:
                    if reply in calls:  # (not forgotten during the probe)
                        calls[reply] = (now + self._period, run_id, event)


__all__ = ["STALL_PROBE_SEC", "StallWatch"]
