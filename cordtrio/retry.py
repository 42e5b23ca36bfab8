"""Retrying backend calls: a store that blinks must never fail a run (or lose one)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from .errors import CordtrioError, StoreError

T = TypeVar("T")
log = logging.getLogger("cordtrio.retry")

INITIAL_DELAY = 0.05
MAX_DELAY = 5.0


def is_transient(exc: BaseException) -> bool:
    """Backend trouble (connection, timeout, ``StoreError``) is transient; a definite
    answer (not found, invalid) is not."""
    if isinstance(exc, StoreError):
        return True
    if isinstance(exc, CordtrioError):
        return False
    return isinstance(exc, Exception)


_waiting = 0


def calls_waiting() -> int:
    """Backend calls of this process waiting out a transient failure right now (for
    ``/health``: above 0 the process is degraded — its runs wait for a backend)."""
    return _waiting


async def retrying(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Await ``op()`` until it succeeds, backing off (50 ms doubling to 5 s) on transient
    errors; definite errors propagate at once. Cancellation ends the wait, as always."""
    try:
        return await op()
    except Exception as exc:
        return await retry_after(exc, op, what)


async def retry_after(first: Exception, op: Callable[[], Awaitable[T]], what: str) -> T:
    """``retrying`` once the first attempt of ``op`` has failed with ``first``: raise it if
    it is definite, else back off and try again. A hot path makes its first attempt itself,
    so a call that works builds no closure and no message::

        try:
            data = await payloads.get_result(key)
        except Exception as exc:
            data = await retry_after(exc, lambda: payloads.get_result(key), f"load {key}")
    """
    global _waiting
    if not is_transient(first):
        raise first
    delay = INITIAL_DELAY
    attempt = 1
    _waiting += 1
    try:
        log.warning("%s failed (attempt %d, retrying in %.2fs): %r", what, attempt, delay,
                    first)
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            try:
                return await op()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                log.warning("%s failed (attempt %d, retrying in %.2fs): %r", what, attempt,
                            delay, exc)
    finally:
        _waiting -= 1
