"""Test helpers: a router and clients on a private address in one process, and a way
to make a client look stopped."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

from .client import NngBus, open_nng_bus
from .router import NngRouter, open_nng_router


def private_ipc_address() -> tuple[str, str]:
    """A fresh ``ipc://`` address in a new temporary directory (and that directory)."""
    directory = tempfile.mkdtemp(prefix="cordtrio-nng-")
    return f"ipc://{directory}/bus.ipc", directory


@asynccontextmanager
async def open_loopback(transport: str = "ipc") -> AsyncIterator[tuple[NngRouter, NngBus]]:
    """A router on a private ``ipc://`` path (or ``tcp://127.0.0.1:<free port>``) and one
    client connected to it."""
    directory = None
    if transport == "ipc":
        address, directory = private_ipc_address()
    elif transport == "tcp":
        address = "tcp://127.0.0.1:0"
    else:
        raise ValueError(f"open_loopback: unknown transport {transport!r}")
    try:
        async with open_nng_router(address) as router, open_nng_bus(
            router.urls[0], connect_timeout=5
        ) as client:
            yield router, client
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)




@contextmanager
def paused(bus: NngBus) -> Iterator[None]:
    """Inside the block ``bus`` neither reads frames, nor sends any, nor pings: to the
    router it looks like a process that was stopped (SIGSTOP) or whose event loop is
    blocked. Leaving the block lets it go on, as a stopped process resumes."""
    bus._paused = trio.Event()
    try:
        yield
    finally:
        event, bus._paused = bus._paused, None
        event.set()


__all__ = ["open_loopback", "paused", "private_ipc_address"]
