"""Tunings of the trio-asyncio loop ``connect`` opens (each patches that loop *instance*).

trio-asyncio 0.16 does some things a plain asyncio loop does not, at a cost that showed on
W1 over Redis. Each tuning here replaces a method on the one loop with one that gives the
same results cheaper; a loop without the expected internals is left as it is.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import trio

log = logging.getLogger(__name__)

DRAIN_PER_TICK = 512
"""asyncio callbacks the loop runs per Trio scheduling tick (trio-asyncio runs one)."""


def run_ready_callbacks_per_tick(loop: Any, budget: int = DRAIN_PER_TICK) -> None:
    """Make trio-asyncio's ``loop`` run every ready asyncio callback (up to ``budget``) in
    one Trio tick, as asyncio's own loop does, instead of one callback per tick; and wait
    for the next callback without a Trio cancel scope per wait.

    trio-asyncio (0.16) takes one handle off its queue per ``_main_loop_one`` and then
    yields to the Trio scheduler; a Redis round trip through redis-py is ~20 callbacks, so
    with many Trio tasks runnable each command waited ~20 full scheduler rounds (measured:
    W1 on Redis spent most of its time in those rounds). Callbacks keep their FIFO order;
    the budget bounds how long Trio tasks wait. The drain stops when the queue's buffer is
    empty, rather than when trio-asyncio's ``_main_loop_one`` raises ``WouldBlock`` (an
    exception per tick: ~5% of a lone round trip); an asyncio timer due by then runs at
    the loop's next turn, which does not wait while one is due.

    When its queue is empty, trio-asyncio waits for the next callback inside
    ``trio.move_on_after(<earliest asyncio timer>)``, a new cancel scope per wait (~50k
    instructions: a lone Redis round trip waits twice). Here the loop's task waits on the
    queue alone, and a ``_TimerAlarm`` task (one cancel scope, its deadline moved only when
    an earlier timer appears) queues a no-op callback when the earliest timer is due, so
    the loop wakes and runs it as before. A loop without the expected internals is left
    as it is."""
    one = getattr(loop, "_main_loop_one", None)
    recv = getattr(loop, "_q_recv", None)
    timers = getattr(loop, "_timers", None)
    nursery = getattr(loop, "_nursery", None)
    queued = getattr(getattr(recv, "_state", None), "data", None)  # the channel's buffer
    if (one is None or recv is None or not isinstance(timers, list) or nursery is None
            or not isinstance(queued, collections.deque)):
        log.debug("trio-asyncio loop internals changed: one callback per tick")
        return
    held = _HeldBack(recv)
    alarm = _TimerAlarm(loop)
    nursery.start_soon(alarm.run)
    loop._q_recv = held  # ``one`` takes what ``main_loop_one`` received from here first

    async def main_loop_one(no_wait: bool = False) -> None:
        if not no_wait and held.item is None and not (timers and timers[0]._when
                                                      <= loop.time()):
            if timers:
                alarm.ring_at(timers[0]._when)
            held.item = await recv.receive()  # no cancel scope: the alarm wakes us
        await one(True)
        for _ in range(budget):
            if not queued:  # nothing more this tick; a due timer runs at the next call
                return
            await one(True)

    loop._main_loop_one = main_loop_one


class _HeldBack:
    """The loop's queue (its receiving end) with one item received ahead: trio-asyncio's
    own ``_main_loop_one(no_wait=True)`` takes it first, so that it handles every item."""

    __slots__ = ("_recv", "item")

    def __init__(self, recv: Any) -> None:
        self._recv = recv
        self.item: Any = None

    def receive_nowait(self) -> Any:
        item = self.item
        if item is None:
            return self._recv.receive_nowait()
        self.item = None
        return item


def _nothing() -> None:
    pass


class _TimerAlarm:
    """Queues a no-op callback on the loop when its earliest asyncio timer is due (set by
    ``ring_at`` before the loop's task waits), which wakes the task to run that timer."""

    def __init__(self, loop: Any) -> None:
        self._send = loop._q_send
        self._scope = trio.CancelScope()
        self._wake = asyncio.Handle(_nothing, (), loop)
        self._wake.cancel()  # a cancelled handle: the loop takes it and runs nothing

    def ring_at(self, when: float) -> None:
        """Ring at ``when`` at the latest."""
        if when < self._scope.deadline:
            self._scope.deadline = when

    async def run(self) -> None:
        while True:
            with self._scope:
                await trio.sleep_forever()
            self._scope = trio.CancelScope()
            self._send.send_nowait(self._wake)


def watch_fds_without_synchronizing(loop: Any) -> None:
    """Make trio-asyncio's ``loop`` wait for a reader's (or writer's) next readiness right
    after calling it, instead of first waiting until the loop ran every callback queued
    so far (``synchronize``: a ``trio.Event``, a queued callback and a second wake-up of
    the watching task per read). A stream's reader only buffers what it reads and wakes
    the task awaiting it, so reading on before that task ran is what asyncio's own loop
    does when the socket stays readable. A loop without the expected internals is left
    as it is."""
    if not hasattr(loop, "_io_task"):
        return

    async def io_task(fd: Any, handle: Any, wait_ready: Any) -> None:
        with handle._scope:
            try:
                while not handle._cancelled:
                    try:
                        await wait_ready(fd)
                    except OSError:
                        if handle._cancelled:  # closed right after its handle was cancelled
                            break
                        raise
                    if handle._cancelled:
                        break
                    handle._run()
            except Exception as exc:
                handle._raise(exc)

    loop._io_task = io_task


def check_callbacks_as_asyncio_does(loop: Any) -> None:
    """Make trio-asyncio's ``loop`` check the callbacks it is given only in debug mode, as
    asyncio's own loop does (``BaseEventLoop.call_soon`` calls ``_check_callback`` only
    when ``loop.get_debug()``). trio-asyncio (0.16) checks every ``call_soon``/``call_at``,
    and the check (``inspect.iscoroutinefunction`` on each callback) was ~2% of the engine's
    CPU on Redis — several callbacks per round trip. In debug mode, or on a loop without
    the expected internals, the loop is left as it is."""
    check = getattr(loop, "_check_callback", None)
    if check is None or loop.get_debug():
        return

    def check_callback(callback: Any, method: str) -> None:
        if not callable(callback):  # the cheap half of asyncio's check is kept
            check(callback, method)

    loop._check_callback = check_callback


__all__ = ["DRAIN_PER_TICK", "check_callbacks_as_asyncio_does", "run_ready_callbacks_per_tick",
           "watch_fds_without_synchronizing"]
