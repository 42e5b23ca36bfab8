"""Waiting for the Celery peer's results without hanging on a lost notification.

Celery's Redis result backend tells a waiting ``AsyncResult.get()`` that its task is done
through a pub/sub message: the waiter subscribes to the task's channel, reads the stored
result once, then waits for the message. Now and then (a few in 10,000 W1 chains on a busy
2-core machine, Celery 5.7, redis-py 8) the message never reaches ``get()``, which then
waits out its whole timeout although the result is stored: the harness measured that as a
10-minute hang, with the worker idle, every result in Redis and the client subscribed to
the finished task's channel. Where the message goes was not pinned down.

``collect`` therefore waits with ``get()`` in short slices and, after each slice that
ends without the result, reads the stored result itself: a finished task whose message
was lost costs at most one slice. Such results are counted (``Collected.read_stored``):
lost messages, and messages Celery's client had not read yet — for a chord of 1,000
tasks its ``get()`` returns ~2.4 s after the callback's result is stored here, while it
reads the 1,000 header tasks' messages first; a slice cuts that to at most 0.5 s (each
``get()`` also reads the stored result when it starts waiting), which favours Celery. It
fails fast, with the cause in the message, when the worker process has exited or when the
server's key count (every finished task stores its result) has not moved for ``stall``
seconds.

It only needs the results' ``id`` and ``get``, the backend's stored state, a progress count
and the worker's exit code, so it is tested without Celery (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
SLICE = 0.5
"""Seconds one ``get()`` waits before the stored result is read directly."""


class PeerStalled(RuntimeError):
    """The Celery peer stopped making progress (its message names why)."""


class Result(Protocol):
    id: str

    def get(self, *, timeout: float, disable_sync_subtasks: bool) -> Any: ...


@dataclass
class Collected:
    results: int
    read_stored: int
    """Results found stored after a slice in which ``get()`` did not return."""


def collect(
    results: Sequence[Result],
    *,
    stored_status: Callable[[str], str],
    worker_exit: Callable[[], str | None],
    progress: Callable[[], int],
    timeout_error: type[BaseException],
    timeout: float,
    stall: float,
    clock: Callable[[], float] = time.monotonic,
) -> Collected:
    """Wait for every result in order. ``stored_status(task_id)`` reads the task's state
    from the result backend (``PENDING`` when nothing is stored), ``worker_exit()`` says
    why the worker is gone (None while it runs), ``progress()`` is a count that grows while
    the worker gets on (the server's keys), ``timeout_error`` is what ``get`` raises when
    its slice ends. Raises ``PeerStalled`` when the worker has exited, when neither a result
    came nor ``progress()`` moved for ``stall`` seconds, or after ``timeout`` s in all."""
    start = last_progress = clock()
    seen = progress()
    stored = 0
    for done, result in enumerate(results):
        while True:
            try:
                result.get(timeout=SLICE, disable_sync_subtasks=False)
                break
            except timeout_error:
                pass
            status = stored_status(result.id)
            if status in READY:
                if status != "SUCCESS":
                    raise PeerStalled(f"celery task {result.id} ended {status}")
                stored += 1  # its notification lost, or not read by Celery yet
                # get() reads the stored result when it starts waiting: it returns now,
                # and Celery drops its subscription (left over, it would be unsubscribed
                # from AsyncResult.__del__ at exit, after the server has stopped).
                with contextlib.suppress(timeout_error):
                    result.get(timeout=SLICE, disable_sync_subtasks=False)
                break
            gone = worker_exit()
            now = clock()
            count = progress()
            if count != seen:
                seen, last_progress = count, now
            where = f"{done} of {len(results)} results in, waiting for task {result.id}"
            if gone is not None:
                raise PeerStalled(f"the celery worker exited ({gone}); {where}")
            if now - last_progress > stall:
                raise PeerStalled(f"no celery progress for {stall:.0f} s (no result, no new "
                                  f"key in Redis) while the worker runs; {where} (state "
                                  f"{status})")
            if now - start > timeout:
                raise PeerStalled(f"celery results not in after {timeout:.0f} s; {where}")
        last_progress = clock()
    return Collected(len(results), stored)
