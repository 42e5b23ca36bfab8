"""Redis payload store: job inputs at ``ctx:<job>`` and results at ``res:<job>`` (SPEC §11),
each written with ``SET key value EX ttl`` (default 24 h), so Redis expires them itself.

A result written through a store that also reads results (an engine and a worker in one
process sharing it) is kept until its first read, which it answers without a round trip;
so is a job input that a run write of this process stored, once the store reads job inputs
(``RECENT_PAYLOADS_BYTES``)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from cordtrio.errors import NotFoundError
from cordtrio.payloads import CONTEXT_PREFIX, RESULT_PREFIX, check_payload_key, context_key_at

from .adapter import RedisAdapter

DEFAULT_TTL_SECONDS = 24 * 3600

clock = time.monotonic
"""What a kept payload's age is measured with (Redis expires keys on real time, not on
Trio's clock); read before each write is sent."""

RECENT_PAYLOADS_BYTES = 4 * 1024 * 1024
"""Bytes of payloads written here and not yet read here that a store keeps at most (the
oldest are dropped first: a result nobody here reads, one of a cancelled job say, or a job
input another process's worker took, only waits its turn)."""


class RedisPayloadStore:
    """Bytes by key with a TTL. ``ttl_seconds=None`` (or ``<= 0``) keeps entries forever.

    Only keys of the payload namespace are read or written: ``*_context`` take ``ctx:<job>``,
    ``*_result`` ``res:<job>``; any other key (``secret:token``, ``wf:run:<id>``) raises
    ``PayloadPointerError`` before a command is sent (``cordtrio.payloads``).

    The TTL is Redis's own (wall-clock) expiry: unlike the memory payload store it does not
    follow Trio's clock, so ``MockClock`` cannot make an entry expire.

    Results read back in the process that wrote them: once ``get_result`` has been called
    (an engine reads through this store), each result ``put_result`` stores is also kept,
    up to ``RECENT_PAYLOADS_BYTES``, until ``get_result`` takes it: an engine and a worker
    sharing the store (one process) skip the engine's ``GET`` of every result (a parked
    caller and a round trip, ~45k instructions per W1 step). It is the value this process
    stored under that key; a result the worker wrote elsewhere, a second read, and one
    ``delete`` dropped are read from Redis. A store that never reads results (a worker's
    own process) keeps nothing.

    Job inputs likewise, once ``get_context`` has been called (a worker reads through this
    store): each one ``put_context`` stores, or a run write of a ``RedisStore`` committing
    this store's payloads stores (``committed``), is kept until ``get_context`` takes it,
    and the worker sharing the store skips its ``GET`` of every job's input.
    """

    def __init__(self, redis: RedisAdapter, *, ttl_seconds: int | None = DEFAULT_TTL_SECONDS
                 ) -> None:
        self._redis = redis
        self.ttl_seconds = int(ttl_seconds) if ttl_seconds and ttl_seconds > 0 else None
        self._reads_results = False  # set by the first ``get_result``
        self._reads_contexts = False  # set by the first ``get_context``
        # payloads written here, not yet read here: (bytes, until when they may be answered)
        self._recent: dict[str, tuple[bytes, float]] = {}
        self._recent_bytes = 0

    @property
    def adapter(self) -> RedisAdapter:
        """The connection it writes through (a ``RedisStore`` on the same one writes job
        inputs in its run writes: ``RedisStore.commits_payloads_of``)."""
        return self._redis

    # Each read and write is one coroutine frame over the batcher's: a waiting caller's
    # every suspension and wake-up passes through each frame of its chain.
    async def put_context(self, key: str, data: bytes) -> None:
        await self._put_kept(check_payload_key(key, CONTEXT_PREFIX), data,
                             self._reads_contexts)

    async def get_context(self, key: str) -> bytes:
        key = check_payload_key(key, CONTEXT_PREFIX)
        self._reads_contexts = True
        # (the read inline in each: a frame of its own would be one more on every read)
        kept = self._take_kept(key)
        if kept is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return kept
        return _found(key, await self._redis.call_plain("get payload", key, "get", (key,), {}))

    async def get_context_at(self, ptr: str) -> bytes:
        """``get_context(key_from_pointer(ptr))`` (the same answers and errors) in one call,
        the key checked once: a worker's read of each job's input (``json_payloads.
        StorePath.context_at``; tests/redis/test_redis_payloads.py compares the two)."""
        key = context_key_at(ptr)
        self._reads_contexts = True
        kept = self._take_kept(key)
        if kept is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return kept
        return _found(key, await self._redis.call_plain("get payload", key, "get", (key,), {}))

    async def put_result(self, key: str, data: bytes) -> None:
        await self._put_kept(check_payload_key(key, RESULT_PREFIX), data, self._reads_results)

    async def get_result(self, key: str) -> bytes:
        key = check_payload_key(key, RESULT_PREFIX)
        self._reads_results = True
        kept = self._take_kept(key)
        if kept is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return kept
        return _found(key, await self._redis.call_plain("get payload", key, "get", (key,), {}))

    reads_results_then = True
    """``get_result_then`` is offered (``json_payloads.path_for``). False in a subclass that
    overrides ``get_result`` but not ``get_result_then`` (to count or fail reads: the
    engine's reads then all go through the method it overrides)."""

    reads_contexts_at = True
    """``get_context_at`` is offered (``json_payloads.path_for``). False in a subclass that
    overrides ``get_context`` but not ``get_context_at``."""

    writes_results_then = True
    """``put_result_then`` is offered (``json_payloads.path_for``). False in a subclass
    that overrides ``put_result`` but not ``put_result_then``."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "get_result" in cls.__dict__ and "get_result_then" not in cls.__dict__:
            cls.reads_results_then = False
        if "put_result" in cls.__dict__ and "put_result_then" not in cls.__dict__:
            cls.writes_results_then = False
        if "get_context" in cls.__dict__ and "get_context_at" not in cls.__dict__:
            cls.reads_contexts_at = False

    def put_result_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> bool:
        """``put_result`` whose outcome is handed to ``done`` rather than awaited: a true
        reply once stored, None when the write failed (write it again with ``put_result``
        for the error). For a worker that reports a job once its result is stored without
        its slot waiting for the write (``Worker._stored``): the reply of the batched
        ``SET`` calls ``done``, from the batcher's sender. False, with nothing written and
        ``done`` never called, when writes are not batched, or when this store keeps what
        it writes for its own reads (an engine reads results through it: ``put_result``
        remembers them). ``PayloadPointerError`` for a key outside ``res:``."""
        key = check_payload_key(key, RESULT_PREFIX)
        if self._reads_results or data.__class__ is not bytes:
            return False
        return self._redis.call_then("put payload", key, "set", (key, data, self.ttl_seconds),
                                     done)

    def get_result_then(self, key: str, done: Callable[[bytes | None], None]) -> bool:
        """``get_result`` whose answer is handed to ``done`` rather than awaited: the
        payload, or None when the read failed or found nothing (read it again with
        ``get_result`` for the error). For an engine that reads a result before the run
        task it is for wakes (``Engine._on_result``): the reply of the batched ``GET``
        calls ``done``, from the batcher's sender; a payload kept here, at once. False,
        with nothing read and ``done`` never called, when reads are not batched (the
        caller reads with ``get_result``). ``ValueError`` for a key outside ``res:``."""
        key = check_payload_key(key, RESULT_PREFIX)
        self._reads_results = True
        if self._recent:  # (nothing kept: a worker in another process)
            kept = self._take_kept(key)
            if kept is not None:
                done(kept)
                return True
        return self._redis.call_then("get payload", key, "get", (key,), done)

    def committing(self, payloads: Mapping[str, bytes]) -> None:
        """A run write is about to store these job inputs (``RedisStore``): until it
        succeeded, Redis may keep older values, so none of them is answered from here."""
        if self._recent:
            for key in payloads:
                self._forget(key)

    def committed(self, payloads: Mapping[str, bytes], sent_at: float) -> None:
        """A run write sent at ``sent_at`` (``clock()``, read before it went) stored these
        job inputs: kept for this process's read (once it reads job inputs,
        ``get_context``), no longer than Redis keeps them."""
        if self._reads_contexts:
            until = self._until(sent_at)
            for key, data in payloads.items():
                self._remember(key, data if type(data) is bytes else bytes(data), until)

    async def _put_kept(self, key: str, data: bytes, keep: bool) -> None:
        """Write the payload; keep it for this process's read when ``keep``."""
        if not keep:
            await self._put(key, data)
            return
        self._forget(key)  # until this write succeeded: Redis may keep the older value
        sent_at = clock()
        await self._put(key, data)
        self._remember(key, bytes(data), self._until(sent_at))

    def _take_kept(self, key: str) -> bytes | None:
        """The payload kept since this process wrote it (taken: once; not once Redis may
        have expired it), else None: the reader asks Redis. (Not a coroutine of its own:
        a reader waiting for Redis would pass its wake-up through one more frame.)"""
        kept = self._recent.pop(key, None)
        if kept is not None:
            data, until = kept
            self._recent_bytes -= len(data)
            if clock() < until:
                return data
        return None

    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        check_payload_key(key)
        self._forget(key)
        await self._redis.call("delete payload", key, "delete", key)

    def _until(self, sent_at: float) -> float:
        """Until when a payload written at ``sent_at`` may be answered from here: its TTL
        counted from before the write went, so never after Redis expires it."""
        return sent_at + self.ttl_seconds if self.ttl_seconds is not None else math.inf

    def _remember(self, key: str, data: bytes, until: float) -> None:
        """Keep the payload just stored for this process's read (until ``until``), dropping
        the oldest kept beyond ``RECENT_PAYLOADS_BYTES``."""
        if len(data) > RECENT_PAYLOADS_BYTES:
            return
        recent = self._recent
        self._forget(key)
        recent[key] = (data, until)
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_PAYLOADS_BYTES:
            self._forget(next(iter(recent)))

    def _forget(self, key: str) -> None:
        kept = self._recent.pop(key, None)
        if kept is not None:
            self._recent_bytes -= len(kept[0])

    def _put(self, key: str, data: bytes) -> Awaitable[Any]:
        """The ``SET key data EX ttl`` of a write, to be awaited."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"payload {key!r}: expected bytes, got {type(data).__name__}")
        return self._redis.call_plain("put payload", key, "set", (key, bytes(data)),
                                      {"ex": self.ttl_seconds})


def _found(key: str, raw: Any) -> bytes:
    """The payload ``GET`` answered with for ``key``."""
    if raw is None:
        raise NotFoundError(f"payload {key!r} not found")
    return bytes(raw)


__all__ = ["DEFAULT_TTL_SECONDS", "RECENT_PAYLOADS_BYTES", "RedisPayloadStore"]
