"""Coalescing concurrent Redis commands into pipelines: one bridge hop, one round trip.

Every bridge hop (Trio → asyncio → redis-py → socket and back) costs hundreds of µs of CPU,
while a command inside a pipeline costs tens (measured: a lone ``GET`` ~380 µs, a ``GET`` in
a pipeline of 100 ~35 µs). With many run tasks in flight (and the worker) each sending its
own payload ``GET``/``SET``, most of the time went into hops. ``CommandBatcher`` queues the
single commands ``RedisAdapter.call`` is asked for and sends those issued within one Trio
scheduling tick as one non-transactional pipeline.

* **Per-call semantics are kept**: each caller gets its own reply, or its own error
  translated with its own ``what``/``key`` (the pipeline runs with
  ``raise_on_error=False``); a lost connection is retried for the whole batch as ``run``
  retries a lone call, then each caller gets the ``StoreError`` it would have got alone.
* **No ordering is added or lost**: a task awaits its call before it issues the next, so
  one task's commands stay in order; commands of different tasks were concurrent anyway.
  The pipeline is not a transaction — nothing atomic goes through here (``MULTI``/``EXEC``
  and scripts written for atomicity are sent by the store as they were).
* **Cancellation**: a cancelled caller stops waiting; its command may still run (as a lone
  command already sent would). At most ``MAX_IN_FLIGHT`` batches are in flight; commands
  issued meanwhile wait for the next batch, which then carries all of them.
* **Scripts**: the ``EVALSHA``s of the store's own scripts in one batch (an engine step's
  run write, a run create, a lease release: ``script_merge.MERGED``) go as one ``EVALSHA``
  of a script that runs each call in turn, each with its own reply or error. Should the
  server not know that script (``NOSCRIPT``: restarted, flushed), it is loaded and the
  call sent once more.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rx
import trio

from cordtrio.errors import CordtrioError, StoreError

from .adapter import _BACKEND_ERRORS, RedisAdapter
from .script_merge import MERGED, MergedScripts

MAX_IN_FLIGHT = 4
"""Pipelines the batcher has in flight at once (each holds one pooled connection)."""

MAX_BATCH = 1000
"""Commands per pipeline at most; more wait for the next one."""


class _Call:
    """One queued command, its caller's ``what``/``key`` (for errors), and its outcome.

    The caller parks itself (``trio.lowlevel.wait_task_rescheduled``) and the sender
    reschedules it with its reply or error: cheaper than a ``trio.Event`` per call (its
    parking lot, and a second wake-up through it), which was a sizeable share of a
    batched command's cost. ``task`` is None once the caller stopped waiting (cancelled)."""

    __slots__ = ("args", "error", "key", "kwargs", "method", "reply", "task", "what")

    def __init__(self, what: str, key: str, method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.what = what
        self.key = key
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        self.reply: Any = None
        self.error: BaseException | None = None

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        """The caller is cancelled: it stops waiting (its command may still run)."""
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        """Wake the caller, its ``reply`` or ``error`` set (unless it stopped waiting)."""
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class CommandBatcher:
    """Queues ``call``s and sends each tick's worth as one pipeline (see the module doc)."""

    def __init__(self, redis: RedisAdapter, nursery: trio.Nursery,
                 scripts: MergedScripts = MERGED) -> None:
        self._redis = redis
        self._scripts = scripts
        self._nursery = nursery
        self._queue: list[_Call] = []
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        self._scheduled = False

    async def call(self, what: str, key: str, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """``client.<method>(*args, **kwargs)`` in the next pipeline; its reply or error."""
        entry = _Call(what, key, method, args, kwargs)
        self._queue.append(entry)
        if not self._scheduled:
            self._scheduled = True
            self._nursery.start_soon(self._flush)
        await trio.lowlevel.wait_task_rescheduled(entry.abort)
        if entry.error is not None:
            raise entry.error
        return entry.reply

    async def _flush(self) -> None:
        """Started by the first call of a tick: by the time it runs, every task that ran in
        that tick has queued its command. Takes the queue once a pipeline slot is free."""
        async with self._slots:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if self._queue:
                self._nursery.start_soon(self._flush)  # the rest: next pipeline
            else:
                self._scheduled = False
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[_Call]) -> None:
        redis = self._redis
        first = batch[0]
        merged, one = self._merge(batch)
        if one is None:
            sent = batch
        else:
            ids = set(map(id, merged))
            sent = [one, *(c for c in batch if id(c) not in ids)]
        try:
            replies = await redis.run_batch(f"{first.what} (+{len(batch) - 1} batched)",
                                            [(c.method, c.args, c.kwargs) for c in sent])
            if one is not None:
                replies = await self._unmerge(batch, merged, sent, replies)
        except _BACKEND_ERRORS as exc:
            for c in batch:
                c.error = redis._final_error(exc, c.what, c.key)
        except Exception as exc:  # not a backend error (a bug): every caller gets it, as
            for c in batch:       # it would alone; the batcher (and the connection) live on
                c.error = exc
        except BaseException:  # Cancelled: the connection is closing
            for c in batch:
                c.error = StoreError(
                    f"redis {redis.url}: {c.what}: connection closing (key {c.key!r})")
            raise
        else:
            for c, reply in zip(batch, replies, strict=True):
                if isinstance(reply, rx.NoScriptError):
                    c.error = reply  # RedisAdapter.script loads it and tries again
                elif isinstance(reply, Exception):
                    c.error = (reply if isinstance(reply, CordtrioError)
                               else redis.translate(reply, c.what, c.key))
                else:
                    c.reply = reply
        finally:
            for c in batch:
                c.wake()

    def _merge(self, batch: list[_Call]) -> tuple[list[_Call], _Call | None]:
        """The calls of ``batch`` to merge and their merged call (none unless two or
        more). The merged call goes first: the calls of one batch are concurrent."""
        scripts = self._scripts
        merged = [c for c in batch if scripts.mergeable(c.method, c.args)]
        if len(merged) < 2:
            return [], None
        first = merged[0]
        one = _Call(first.what, first.key, "evalsha",
                    scripts.call_args([c.args for c in merged]), {})
        one.task = None  # nobody waits on it: its reply is split among the merged calls
        return merged, one

    async def _unmerge(self, batch: list[_Call], merged: list[_Call], sent: list[_Call],
                       replies: list[Any]) -> list[Any]:
        """The replies in the order of ``batch``, the merged call's (the first sent) split
        per call; sent once more after loading its script if the server did not know it."""
        scripts = self._scripts
        reply = replies[0]
        if isinstance(reply, rx.NoScriptError):
            _, reply = await self._redis.run_batch(
                f"{merged[0].what} (load the merged scripts)",
                [("script_load", (scripts.source,), {}), ("evalsha", sent[0].args, {})])
        if isinstance(reply, Exception):  # the whole call failed: each caller gets it
            split: list[Any] = [reply] * len(merged)
        else:
            split = scripts.replies(reply, len(merged))
        by_call = {id(c): r for c, r in zip(sent[1:], replies[1:], strict=True)}
        by_call.update(zip(map(id, merged), split, strict=True))
        return [by_call[id(c)] for c in batch]


__all__ = ["MAX_BATCH", "MAX_IN_FLIGHT", "CommandBatcher"]
