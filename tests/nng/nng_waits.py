"""What the nng tests share: the bound on waits over real sockets, and a wait for a
condition the bus reaches in its own time (its threads and sockets are not on Trio's clock)."""

from __future__ import annotations

from collections.abc import Callable

import trio

WAIT = 10  # seconds: generous bound for anything that should take milliseconds


async def eventually(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``limit`` seconds."""
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out waiting for {what}")
