"""Tunings of the trio-asyncio loop ``connect`` opens (each patches that loop *instance*).

trio-asyncio 0.16 does some things a plain asyncio loop does not, at a cost that showed on
W1 over Redis. Each tuning here replaces a method on the one loop with one that gives the
same results cheaper; a loop without the expected internals is left as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

log = logging.getLogger(__name__)

DRAIN_PER_TICK = 512
"""asyncio callbacks the loop runs per Trio scheduling tick (trio-asyncio runs one)."""


def run_ready_callbacks_per_tick(loop: Any, budget: int = DRAIN_PER_TICK) -> None:
    """Make trio-asyncio's ``loop`` run every ready asyncio callback (up to ``budget``) in
    one Trio tick, as asyncio's own loop does, instead of one callback per tick.

    trio-asyncio (0.16) takes one handle off its queue per ``_main_loop_one`` and then
    yields to the Trio scheduler; a Redis round trip through redis-py is ~20 callbacks, so
    with many Trio tasks runnable each command waited ~20 full scheduler rounds (measured:
    W1 on Redis spent most of its time in those rounds). Callbacks keep their FIFO order;
    the budget bounds how long Trio tasks wait. A loop without the expected internals is
    left as it is."""
    one = getattr(loop, "_main_loop_one", None)
    if one is None or not hasattr(loop, "_q_recv"):
        log.debug("trio-asyncio loop internals changed: one callback per tick")
        return

    async def main_loop_one(no_wait: bool = False) -> None:
        await one(no_wait)
        for _ in range(budget):
            try:
                await one(True)
            except trio.WouldBlock:
                return

    loop._main_loop_one = main_loop_one


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


__all__ = ["DRAIN_PER_TICK", "check_callbacks_as_asyncio_does", "run_ready_callbacks_per_tick"]
