"""Coalescing concurrent Redis commands into pipelines: one round trip, no bridge hop.

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
* **No ordering is added or lost**: a caller's calls go out in the order it made them
  (a task awaits its call before it issues the next, unless it was cancelled while its
  call was queued; a ``call_then`` caller's next call comes after the first was queued)
  and merged calls never jump a call sent as it is (``_merge``); commands of different
  callers were concurrent anyway. A batch with a command that may write after a merged
  call loads the merged script first (``SCRIPT LOAD``, ~7 KB), so that a server that does
  not know it (``NOSCRIPT``, after a restart or ``SCRIPT FLUSH``) cannot make the merged
  call be sent again after that command; elsewhere it is sent again after the batch (only
  reads come after it).
  The pipeline is not a transaction — nothing atomic goes through here (``MULTI``/``EXEC``
  and scripts written for atomicity are sent by the store as they were).
* **Cancellation**: a cancelled caller stops waiting; its command may still run (as a lone
  command already sent would).
* **While a batch is in flight, calls wait for it** (unless ``MAX_BATCH`` are queued: then
  another sender takes them, up to ``MAX_IN_FLIGHT`` batches in flight): the sender takes
  what was queued meanwhile as soon as its reply is in. Not while a batch waits out a lost
  connection (``RedisAdapter.run_batch``'s retries): calls then go out as before, each
  waiting it out for itself rather than after the batch ahead of it. With the engine's
  work arriving a few results at a time (a worker in another process), a batch per tick
  was mostly one or two commands, each a send that wakes redis-server (W1 on redis-nng:
  ~0.42 → ~0.29 batches per step, ~2% fewer engine instructions); a call waits at most
  one round trip it would otherwise have overlapped. Behind a batch whose reply never
  comes (a server that hangs, or one connection half-open) a call goes out once that
  batch timed out: it fails within twice the reply timeout rather than once, or, on a
  half-open connection, is answered after up to one reply timeout on another connection.
  So calls are held only when replies are timed (``connect``'s ``socket_timeout``, 30 s
  by default); with ``socket_timeout=None`` nothing bounds a batch in flight, and each
  call goes out without waiting for it, as before.
* **No hop per batch**: the batches are sent by ``MAX_IN_FLIGHT`` long-lived *sender*
  tasks on the asyncio side of the trio-asyncio loop. A call queues its command and, if
  no sender is already on its way, wakes an idle one (an asyncio future's result: one
  callback on the loop, which runs the sender in the next Trio tick, after every task of
  this tick queued its command); the sender wakes each caller with Trio's
  ``reschedule``. Before, each batch was a new Trio task and a new asyncio task bridged
  by ``aio_as_trio`` (tasks, futures and done-callbacks both ways, two more scheduler
  rounds): most of what a batch of one command cost. The reply timeout of a round trip
  is the sender's ``reply_watch.ReplyWatch``; ``aclose`` stops the senders.
* **Merged calls**: the ``EVALSHA``s of the store's own scripts in one batch (an engine
  step's run write, a run create, a lease release: ``script_merge.MERGED``) and its
  ``SET key value EX ttl``s (payload writes, ``script_merge.set_ex_args``) go as one
  ``EVALSHA`` of a script that runs each call in turn, each with its own reply or error.
  Should the server not know that script (``NOSCRIPT``: restarted, flushed), it is loaded
  and the call sent once more. ``RedisAdapter.script``'s calls of those scripts are queued
  as such (``script``: function number, keys, arguments; no ``EVALSHA`` tuple built to be
  taken apart again) and merged even when alone in a batch, so their callers never meet
  ``NOSCRIPT`` and await the batcher's wait itself (no coroutine frame of the adapter's).
  The plain ``GET``s of a batch (payloads, mostly) go as one ``MGET``; a key it finds no
  string at is asked again with ``GET`` once the batch has run (``MGET`` answers nil for
  a key of another type, where ``GET`` fails), so each caller gets what ``GET`` gives.
  Calls are merged only between two calls sent as they are: a batch with other commands
  is sent as runs of mergeable calls (one ``EVALSHA`` and one ``MGET`` each) between them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.exceptions as rx
import trio
from outcome import Error, Value

from cordtrio.errors import CordtrioError, StoreError

from . import reply_watch
from .adapter import BATCH_CONNECTIONS, RedisAdapter
from .redis_errors import BACKEND_ERRORS
from .reply_watch import ReplyWatch
from .script_merge import MERGED, SET_EX_SHA, Member, MergedScripts, set_ex_args

_current_task = trio.lowlevel.current_task
_wait = trio.lowlevel.wait_task_rescheduled
log = logging.getLogger(__name__)
_NO_KWARGS: dict[str, Any] = {}  # a ``_Then``'s (never changed)

MAX_IN_FLIGHT = BATCH_CONNECTIONS
"""Pipelines the batcher has in flight at once (each holds one connection, which the
adapter keeps for the next batch)."""

MAX_BATCH = 64
"""Commands per pipeline at most; the rest go in the next pipelines, up to ``MAX_IN_FLIGHT``
at once. Small enough that the engine works on the replies of one pipeline while the
server runs the next: with hundreds of runs in step, one pipeline carrying every command
of a tick left the engine idle for the server's whole turn (W1 on Redis, 1,500 runs,
alternated: ~13 % more steps/s at 64 than at 1,000, a few more hops per step)."""


class _Call:
    """One queued command and its caller's ``what``/``key`` (for errors).

    The caller parks itself (``trio.lowlevel.wait_task_rescheduled``) and the sender
    reschedules it with its reply or error as the outcome of that wait: cheaper than a
    ``trio.Event`` per call (its parking lot, and a second wake-up through it), which was
    a sizeable share of a batched command's cost. ``task`` is None once the caller stopped
    waiting (cancelled) or was answered."""

    __slots__ = ("args", "key", "kwargs", "method", "task", "what")

    def __init__(self, what: str, key: str, method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.what = what
        self.key = key
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.task: trio.lowlevel.Task | None = _current_task()

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        """The caller is cancelled: it stops waiting (its command may still run)."""
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def fail(self, error: BaseException) -> None:
        """Wake the caller with ``error`` (unless it stopped waiting)."""
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, Error(error))


class _Then(_Call):
    """A queued command whose reply goes to a callback, not to a waiting task
    (``CommandBatcher.call_then``): ``done(reply)``, or ``done(None)`` when it failed."""

    __slots__ = ("done",)

    def __init__(self, what: str, key: str, method: str, args: tuple[Any, ...],
                 done: Callable[[Any], None]) -> None:
        # (``_Call``'s fields set here, without its ``__init__``: one call fewer per read)
        self.what = what
        self.key = key
        self.method = method
        self.args = args
        self.kwargs = _NO_KWARGS
        self.task = None  # nobody waits: ``answer`` hands the reply on
        self.done: Callable[[Any], None] | None = done

    def answer(self, reply: Any) -> None:
        """Hand ``reply`` (None for an error) to the callback, once; what it raises is
        logged, never the batch's."""
        done, self.done = self.done, None
        if done is not None:
            try:
                done(None if isinstance(reply, BaseException) else reply)
            except Exception:
                log.exception("redis: a reply's callback failed (key %r)", self.key)

    def fail(self, error: BaseException) -> None:
        self.answer(error)


class CommandBatcher:
    """Queues ``call``s and sends each tick's worth as one pipeline (see the module doc)."""

    def __init__(self, redis: RedisAdapter, scripts: MergedScripts = MERGED) -> None:
        self._redis = redis
        self._scripts = scripts
        self._script_numbers = scripts.by_source
        self._loop = redis.loop
        self._queue: list[_Call] = []
        self._idle: list[asyncio.Future[None]] = []  # the idle senders' wake-up futures
        self._waking = False  # a sender was woken and has not taken the queue yet
        self._reconnecting = 0  # batches waiting out a lost connection
        self._holds = redis.command_timeout is not None  # calls wait for a batch in flight
        self._eager = not self._holds  # calls go without waiting for a batch in flight
        self._closed = False
        self._senders = [self._loop.create_task(self._sender()) for _ in range(MAX_IN_FLIGHT)]

    def call(self, what: str, key: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Awaitable[Any]:
        """``client.<method>(*args, **kwargs)`` in the next pipeline: queued now, for the
        calling task to await at once (its reply or error). A plain function handing back
        the wait, not a coroutine of its own: the caller's wake-up would pass through one
        more frame."""
        if self._closed:
            raise StoreError(f"redis {self._redis.url}: {what}: connection closing "
                             f"(key {key!r})")
        entry = _Call(what, key, method, args, kwargs)
        self._enqueue(entry)
        return _wait(entry.abort)

    def script(self, what: str, key: str, source: str, keys: list[Any], args: list[Any]
               ) -> Awaitable[Any] | None:
        """A call of one of the merged scripts (``script_merge.MERGED``: ``source``, on
        ``keys``/``args`` of plain types), queued as a member of the next batch's merged
        ``EVALSHA`` (merged even when alone in its batch), for the calling task to await at
        once; None, with nothing queued, for any other script or once closing. Its caller
        never meets ``NOSCRIPT``: the batch loads the merged script and sends it again
        (``_split_scripts``). Queued as its function number, keys and arguments: no
        ``EVALSHA`` argument tuple built, to be taken apart again when merged."""
        number = self._script_numbers.get(source)
        if number is None or self._closed:
            return None
        entry = _Call(what, key, "script", (number, keys, args), _NO_KWARGS)
        self._enqueue(entry)
        return _wait(entry.abort)

    def call_then(self, what: str, key: str, method: str, args: tuple[Any, ...],
                  done: Callable[[Any], None]) -> bool:
        """``call`` (no keyword arguments) whose reply, or None if it failed, is handed to
        ``done`` by the sender instead of waking a caller: for a reply no task waits for
        (``RedisPayloadStore.get_result_then``). ``done`` must not block; it is called
        once (also when the batcher closes). False, with nothing queued, once closing."""
        if self._closed:
            return False
        self._enqueue(_Then(what, key, method, args, done))
        return True

    def reconnect_wait(self, waiting: bool) -> None:
        """A batch in flight starts (True) or ends (False) a wait for a lost connection:
        meanwhile the calls queued behind it are sent without waiting for it."""
        self._reconnecting += 1 if waiting else -1
        self._eager = bool(self._reconnecting) or not self._holds
        if waiting and self._queue and not self._waking:
            self._wake()

    def _enqueue(self, entry: _Call) -> None:
        """Queue ``entry`` for the next batch; wake a sender unless one in flight takes the
        queue when its reply is in (module doc)."""
        queue = self._queue
        queue.append(entry)
        if not self._waking and (self._eager or len(self._idle) == MAX_IN_FLIGHT
                                 or len(queue) >= MAX_BATCH):
            self._wake()

    def _wake(self) -> None:
        """Wake an idle sender for the queue (none idle: a busy one takes it when done)."""
        if self._idle:
            self._waking = True
            self._idle.pop().set_result(None)

    async def _sender(self) -> None:
        """One sender (asyncio side): takes up to ``MAX_BATCH`` queued calls, sends them,
        wakes their callers; waits for a wake-up when the queue is empty."""
        watch = None
        if self._redis.command_timeout is not None:
            task = asyncio.current_task()
            assert task is not None
            watch = ReplyWatch(self._loop, task, self._redis.command_timeout)
            reply_watch.CURRENT.set(watch)
        try:
            while True:
                if not self._queue:
                    waiter = self._loop.create_future()
                    self._idle.append(waiter)
                    await waiter
                self._waking = False
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                if self._queue:
                    self._wake()  # the rest: another sender's pipeline
                if batch:
                    await self._send(batch)
        finally:
            if watch is not None:
                watch.close()

    async def aclose(self) -> None:
        """Stop the senders (Trio side). A call still queued or in flight fails with
        ``StoreError`` (the connection is closing); later calls fail at once."""
        self._closed = True
        for sender in self._senders:
            sender.cancel()
        await self._loop.run_aio_future(
            asyncio.gather(*self._senders, return_exceptions=True))
        queued, self._queue = self._queue, []
        self._fail_closing(queued)

    def _fail_closing(self, batch: list[_Call]) -> None:
        url = self._redis.url
        for c in batch:
            c.fail(StoreError(f"redis {url}: {c.what}: connection closing (key {c.key!r})"))

    async def _send(self, batch: list[_Call]) -> None:
        """Send ``batch`` (asyncio side) and wake each caller with its reply or error."""
        redis = self._redis
        first = batch[0]
        try:
            units: list[_Call | _Group] | list[_Call] = (
                self._merge(batch) if len(batch) > 1 or first.method == "script" else batch)
            commands = [(u.kind, u.args, _NO_KWARGS) if isinstance(u, _Group)
                        else (u.method, u.args, u.kwargs) for u in units]
            loads = units is not batch and _writes_after_script(units)
            if loads:  # the merged script loaded first: it cannot miss (NOSCRIPT) and be
                # sent again after the writes that came after it in the batch
                commands.insert(0, ("script_load", (self._scripts.source,), _NO_KWARGS))
            replies = await redis.run_batch(f"{first.what} (+{len(batch) - 1} batched)",
                                            commands)
            if loads:
                del replies[0]
            calls = batch
            if units is not batch:  # merged: each member's reply split out of its group's
                calls, merged, replies = [], replies, []
                for unit, reply in zip(units, merged, strict=True):
                    if isinstance(unit, _Group):
                        calls += unit.members
                        if unit.kind == "evalsha":
                            replies += await self._split_scripts(unit, reply)
                        else:
                            replies += await self._split_gets(unit, reply)
                    else:
                        calls.append(unit)
                        replies.append(reply)
        except BACKEND_ERRORS as exc:
            for c in batch:
                c.fail(redis._final_error(exc, c.what, c.key))
        except Exception as exc:  # not a backend error (a bug): every caller gets it, as
            for c in batch:       # it would alone; the batcher (and the connection) live on
                c.fail(exc)
        except BaseException:  # CancelledError: the connection is closing
            self._fail_closing(batch)
            raise
        else:
            reschedule = trio.lowlevel.reschedule
            for c, reply in zip(calls, replies, strict=True):
                task = c.task  # inline, once per call of every batch: a reply wakes its caller
                if task is None:  # cancelled: stopped waiting; or a callback's
                    if c.__class__ is _Then:
                        c.answer(reply)  # type: ignore[attr-defined]
                    continue
                c.task = None
                if not isinstance(reply, Exception):
                    reschedule(task, Value(reply))
                elif isinstance(reply, rx.NoScriptError):
                    reschedule(task, Error(reply))  # RedisAdapter.script loads it, tries again
                else:
                    reschedule(task, Error(reply if isinstance(reply, CordtrioError)
                                           else redis.translate(reply, c.what, c.key)))

    def _merge(self, batch: list[_Call]) -> list[_Call | _Group]:
        """What ``batch`` is sent as, in order: the calls that go as one command (the
        store's scripts and payload ``SET``s as one ``EVALSHA``, plain ``GET``s as one
        ``MGET``) and the calls sent as they are. A caller's calls can meet in one batch
        (one cancelled while its call was queued may make the next), and Redis must apply
        them in the order they were made: calls are merged only between two calls sent
        as they are (a ``_Segment`` each), never across one. Each call is looked at once."""
        units: list[_Call | _Group] = []
        scripts = self._scripts
        numbers = scripts.numbers
        segment = _Segment()
        for c in batch:
            method = c.method
            if method == "script":  # (number, keys, args): a member as it is
                segment.scripted = True
                segment.members.append(c.args)  # type: ignore[arg-type]
            elif method == "get" and len(c.args) == 1 and not c.kwargs:
                segment.gets.append(c)
                continue
            elif method == "evalsha" and c.args[0] in numbers:  # ``scripts.mergeable``
                segment.members.append(scripts.member(c.args))
            else:
                args = (set_ex_args(method, c.args, c.kwargs) if SET_EX_SHA in numbers
                        else None)
                if args is None:  # sent as it is: the calls before it go first
                    if segment.gets or segment.evals:
                        segment.units(scripts, units)
                        segment = _Segment()
                    units.append(c)
                    continue
                segment.sets.append(len(segment.evals))  # a payload ``SET``
                segment.members.append(scripts.member(args))
            segment.evals.append(c)
        segment.units(scripts, units)
        return units

    async def _split_scripts(self, group: _Group, reply: Any) -> list[Any]:
        """Each script call's reply; the merged script sent once more after loading it if
        the server did not know it."""
        scripts = self._scripts
        if isinstance(reply, rx.NoScriptError):
            _, reply = await self._redis.run_batch(
                f"{group.members[0].what} (load the merged scripts)",
                [("script_load", (scripts.source,), {}), ("evalsha", group.args, {})])
        if isinstance(reply, Exception):  # the whole call failed: each caller gets it
            return [reply] * len(group.members)
        replies = scripts.replies(reply, len(group.members))
        for i in group.sets:  # SET's OK, as redis-py's SET reply: True
            if not isinstance(replies[i], Exception):
                replies[i] = True
        return replies

    async def _split_gets(self, group: _Group, reply: Any) -> list[Any]:
        """Each ``GET``'s value. ``MGET`` answers nil for a key that holds another kind of
        value, where ``GET`` fails: the keys it found no string at (missing keys, usually
        none) are asked again with ``GET``, each for its own reply or error."""
        if isinstance(reply, Exception):
            return [reply] * len(group.members)
        values = list(reply)
        if None in values:  # (usually not: a missing key)
            again = [i for i, v in enumerate(values) if v is None]
            members = group.members
            more = await self._redis.run_batch(
                f"{members[again[0]].what} (+{len(again) - 1} batched)",
                [("get", members[i].args, {}) for i in again])
            for i, value in zip(again, more, strict=True):
                values[i] = value
        return values


class _Segment:
    """Mergeable calls of a batch with no call sent as it is between them (``_merge``):
    their scripts and ``SET``s (``evals``, as merged-script ``members``; ``sets``: which
    of them are payload ``SET``s, whose reply is ``True``) and their ``GET``s."""

    __slots__ = ("evals", "gets", "members", "scripted", "sets")

    def __init__(self) -> None:
        self.evals: list[_Call] = []
        self.members: list[Member] = []
        self.sets: list[int] = []
        self.gets: list[_Call] = []
        self.scripted = False  # a ``script`` call: it has no ``EVALSHA`` of its own

    def units(self, scripts: MergedScripts, units: list[_Call | _Group]) -> None:
        """Add the segment's units to ``units``: its scripts and ``SET``s as one ``EVALSHA``
        (always with a ``script`` call among them), then its ``GET``s as one ``MGET``; a
        lone ``EVALSHA``, ``SET`` or ``GET`` as it is. The writes go before the reads: a
        read moved after a write is another caller's (concurrent with it) or a cancelled
        one's (nobody reads its reply)."""
        evals, gets = self.evals, self.gets
        if len(evals) > 1 or self.scripted:
            units.append(_Group(evals, scripts.merged_args(self.members), "evalsha",
                                self.sets))
        else:
            units += evals  # a lone EVALSHA or SET, as it is
        if len(gets) > 1:
            units.append(_Group(gets, ([c.args[0] for c in gets],), "mget", _NO_SETS))
        else:
            units += gets


class _Group:
    """Calls of one batch sent as one command, ``kind`` (its method: ``evalsha``, ``mget``)
    with ``args``, whose reply is split back among the ``members``; ``sets``: the members
    that are payload SETs (``script_merge``: their reply is ``True``)."""

    __slots__ = ("args", "kind", "members", "sets")

    def __init__(self, members: list[_Call], args: tuple[Any, ...], kind: str,
                 sets: list[int]) -> None:
        self.members = members
        self.args = args
        self.kind = kind
        self.sets = sets


_NO_SETS: list[int] = []  # an MGET group's ``sets`` (never changed)

_READS = frozenset(("get", "exists"))
"""Commands sent as they are that write nothing (the batches' usual reads)."""


def _writes_after_script(units: Sequence[_Call | _Group]) -> bool:
    """Whether a merged script call is followed, in ``units``, by a command that may write
    (anything but an ``MGET`` or a ``_READS`` call): should the server not know the
    script, sending it again after the batch would apply it after those writes."""
    scripted = False
    for unit in units:
        if isinstance(unit, _Group):
            if unit.kind == "evalsha":
                scripted = True
        elif scripted and unit.method not in _READS:
            return True
    return False


__all__ = ["MAX_BATCH", "MAX_IN_FLIGHT", "CommandBatcher"]
