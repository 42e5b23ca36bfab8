"""What the nng tests share: the bound on waits over real sockets, a wait for a condition
the bus reaches in its own time (its threads and sockets are not on Trio's clock), and a
wait for a frame on a bare socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynng
import trio

WAIT = 10  # seconds: generous bound for anything that should take milliseconds


async def eventually(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``limit`` seconds."""
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def receive_raw(sock: Any) -> Any:
    """The next message on a bare pynng socket (polled: not a Trio-aware socket)."""
    while True:
        try:
            return sock.recv_msg(block=False)
        except pynng.TryAgain:
            await trio.sleep(0.005)
