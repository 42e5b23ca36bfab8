"""A nursery for background services that live exactly as long as a ``with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """Yield a nursery whose tasks are cancelled when the block ends.

    An exception raised in the block (or by ``nursery.start`` in it) comes out as itself,
    not wrapped in an ``ExceptionGroup``, so ``except NotFoundError`` around an
    ``open_engine``/``open_worker`` block works. Failures of the background tasks
    themselves stay grouped.
    """
    raised: BaseException | None = None
    lone: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                raised = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if raised is None or len(group.exceptions) != 1 or group.exceptions[0] is not raised:
            raise
        lone = raised
    if lone is not None:
        raise lone  # outside the except block: no spurious exception chaining
