"""Running a process command's Trio main: signals, and errors that come back as themselves.

Trio wraps what escapes a nursery in (nested) exception groups; a ``CliError`` or a
``KeyboardInterrupt`` alone in such a group is unwrapped so ``main`` can report it in one
line with its exit status. ``on_signals`` turns SIGINT/SIGTERM into a graceful stop.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from ..errors import CorruptDataError
from .loading import EXIT_CORRUPT, CliError, one_line

T = TypeVar("T")


def run_trio(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """``trio.run(fn, *args)``, re-raising a lone ``CliError``/``KeyboardInterrupt``; stored
    data that cannot be read (``CorruptDataError``) becomes a one-line ``CliError`` naming
    the key (exit status 6)."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        error = single(group)
        if isinstance(error, (CliError, KeyboardInterrupt)):
            raise error from None
        if isinstance(error, CorruptDataError):
            raise _corrupt(error) from None
        raise
    except CorruptDataError as error:
        raise _corrupt(error) from None


_RECORD_KEY = re.compile(r"key '(wf:(run|def):([^']*))'")


def _corrupt(error: CorruptDataError) -> CliError:
    """One line naming the run or workflow (from the key in the message) and the key."""
    message = one_line(str(error))
    found = _RECORD_KEY.search(message)
    what = ""
    if found is not None:
        what = f"{'run' if found.group(2) == 'run' else 'workflow'} {found.group(3)}: "
    return CliError(f"{what}stored data cannot be read: {message}", EXIT_CORRUPT)


def single(error: BaseException) -> BaseException:
    """The only leaf of nested one-member exception groups (else the group itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class Shutdown:
    """A stop requested by SIGINT/SIGTERM.

    Before ``ready()`` a signal cancels the command at once (nothing is up to be closed
    politely). After it, ``wait()`` returns, so the service leaves its ``async with`` blocks
    normally: the engine releases its leases, a worker hands its queued jobs back to its
    queue group, connections say goodbye. A second signal cancels everything at once.
    """

    def __init__(self, scope: trio.CancelScope, say: Callable[[str], Any]) -> None:
        self._scope = scope
        self._say = say
        self._ready = False
        self._requested = trio.Event()

    def ready(self) -> None:
        self._ready = True

    async def wait(self) -> None:
        await self._requested.wait()

    async def _watch(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self._ready and not self._requested.is_set():
                self._say(f"{name}: stopping")
                self._requested.set()
            else:
                self._say(f"{name}: stopping now")
                self._scope.cancel()


@asynccontextmanager
async def on_signals(say: Callable[[str], Any]) -> AsyncIterator[Shutdown]:
    """Handle SIGINT and SIGTERM for the block (see ``Shutdown``)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            shutdown = Shutdown(nursery.cancel_scope, say)
            nursery.start_soon(shutdown._watch, signals)
            yield shutdown
            nursery.cancel_scope.cancel()


__all__ = ["Shutdown", "on_signals", "run_trio", "single"]
