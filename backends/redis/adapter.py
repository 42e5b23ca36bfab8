"""The one bridge between cordtrio's Trio world and redis-py's asyncio client.

Every Redis call of the backend goes through ``RedisAdapter``: it runs an asyncio coroutine on
the trio-asyncio loop opened by ``connect`` (``loop.run_aio_coroutine``) and translates what
can go wrong into cordtrio's errors (``redis_errors``), so no raw redis-py or asyncio
exception escapes:

* connection trouble (refused, reset, timeouts, a loading or read-only server, any other
  server error) → ``StoreError`` naming the URL (password masked). ``StoreError`` is what the
  engine treats as transient and retries;
* a lost connection (refused, reset, closed by the server, a server still loading its data)
  is first ridden out: the call is retried with a short backoff for up to
  ``reconnect_timeout`` seconds (default ``RECONNECT_TIMEOUT``), so a Redis restart of a
  second or two fails nothing — not a worker's payload read, not a step's dispatch — while a
  server that stays away still gives a ``StoreError`` within a few seconds. Timeouts are not
  retried here (the time is already spent, and the command may have run);
* data that is not what cordtrio wrote (a ``WRONGTYPE`` reply: a string where a hash is
  expected...) → ``RedisDataError`` naming the key. It is *not* a ``StoreError``: retrying
  cannot fix it, so the engine gives up on that run instead of retrying forever. The store
  raises the same error for corrupt JSON.

Cancellation works as usual: cancelling the Trio scope cancels the asyncio task (redis-py then
drops the connection, whose reply would otherwise be read by the next command).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import redis.exceptions as rx
import trio

from cordtrio.errors import CordtrioError, StoreError

from . import lean_pipeline, reply_watch
from .loop_tuning import check_callbacks_as_asyncio_does, run_ready_callbacks_per_tick
from .redis_errors import (
    BACKEND_ERRORS,
    is_disconnect,
    mask_url,
    translate,
    url_secrets,
)


class CommandBatcher(Protocol):
    """What the adapter hands its commands to once batching is on (``batcher.py``)."""

    def call(self, what: str, key: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Awaitable[Any]:
        """The command, queued now; the caller awaits what it returns at once."""

    def call_then(self, what: str, key: str, method: str, args: tuple[Any, ...],
                  done: Callable[[Any], None]) -> bool:
        """The command, queued now; its reply (None if it failed) goes to ``done``."""

    def script(self, what: str, key: str, source: str, keys: list[Any], args: list[Any]
               ) -> Awaitable[Any] | None:
        """A script it merges, queued now, to be awaited at once (else None)."""

    def reconnect_wait(self, waiting: bool) -> None:
        """A batch starts (True) or ends (False) a wait for a lost connection."""

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WATCH_RETRIES = 50
"""Optimistic (WATCH) transactions retried this often before giving up with StoreError."""


RECONNECT_TIMEOUT = 3.0
"""Seconds a call keeps retrying a lost connection before it fails with ``StoreError``."""

_RECONNECT_DELAY = 0.05  # first backoff between reconnection attempts, doubling...
_RECONNECT_DELAY_CAP = 0.5  # ...up to this


BATCHABLE = frozenset({
    "get", "set", "delete", "exists", "hget", "hgetall", "hexists", "scard", "smembers",
    "sismember", "lrange", "zrevrange", "zrevrangebyscore",
})
"""Commands ``call`` may coalesce: short, non-blocking (never ``BLPOP``), and safe to resend
after a lost connection, as every ``call`` already is."""

_PLAIN = frozenset({str, bytes, int, float})
_PLAIN_OR_NONE = _PLAIN | {type(None), bool}


def _plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Arguments of exactly these types (not ``bool``, not subclasses), which redis-py
    encodes without complaint: a value it would refuse
    fails the whole pipeline, so such a call goes out alone and fails alone. Keyword
    arguments may also be ``bool`` (flags such as ``SET``'s ``nx``)."""
    return _PLAIN.issuperset(map(type, args)) and (
        not kwargs or _PLAIN_OR_NONE.issuperset(map(type, kwargs.values())))


BATCH_CONNECTIONS = 4
"""Connections ``run_batch`` keeps between batches: the batcher has this many batches in
flight at most (``batcher.MAX_IN_FLIGHT``)."""


class RedisAdapter:
    """Runs redis-py asyncio calls from Trio, on one loop and one client (connection pool).

    ``run(what, fn, key=...)`` awaits ``fn(client)`` on the asyncio side; ``pipeline`` sends a
    batch of commands in one round trip (``MULTI``/``EXEC`` when ``transaction``);
    ``transaction`` runs an optimistic ``WATCH`` transaction, retried on conflicts.
    ``what`` and ``key`` only serve the error messages.
    """

    def __init__(
        self, client: Any, loop: Any, url: str, *, reconnect_timeout: float = RECONNECT_TIMEOUT,
        command_timeout: float | None = None,
    ) -> None:
        self.client = client
        self.loop = loop
        self.url = mask_url(url)
        self._secrets = url_secrets(url)
        self.reconnect_timeout = reconnect_timeout
        self.command_timeout = command_timeout
        self._batcher: CommandBatcher | None = None
        self._connections = lean_pipeline.KeptConnections(client.connection_pool,
                                                          BATCH_CONNECTIONS)
        self._shas: dict[str, str] = {}
        self._loading: dict[str, trio.Event] = {}  # SCRIPT LOADs in flight, by SHA
        self.on_command: Callable[[tuple[Any, ...]], None] | None = None
        """Called with each command a script carries as arguments (a create, a fenced write) and
        each command a batch sends (``run_batch``): ``testing.CommandCounter`` counts them."""

    def start_batching(self, batcher: CommandBatcher) -> None:
        """Coalesce concurrent single commands into pipelines from now on, through
        ``batcher`` (``batcher.CommandBatcher``, built on this adapter by ``connect``)."""
        self._batcher = batcher

    def stop_batching(self) -> None:
        """Send every further command on its own again (the batcher's nursery is closing)."""
        self._batcher = None

    # ------------------------------------------------------------------------ calls

    async def run(
        self, what: str, fn: Callable[[Any], Awaitable[T]], *, key: str = "",
        reconnect: bool = True,
    ) -> T:
        """``await fn(client)`` on the asyncio loop, with errors translated. A lost
        connection is retried for up to ``reconnect_timeout`` s (unless ``reconnect`` is
        False); ``fn`` must be safe to run again (every caller's is: plain commands, and
        pipelines/transactions that either ran whole or not at all)."""
        try:
            return await self._run_raw(what, fn, reconnect=reconnect)
        except BACKEND_ERRORS as exc:
            raise self._final_error(exc, what, key, reconnect) from None

    def _final_error(self, exc: BaseException, what: str, key: str,
                     reconnect: bool = True) -> CordtrioError:
        """The error a call gives up with (``run``'s translation, plus how long a lost
        connection was waited for)."""
        error = self.translate(exc, what, key)
        if reconnect and is_disconnect(exc):
            error.args = (f"{error} (no connection for {self.reconnect_timeout:g}s)",)
        return error

    async def _run_raw(
        self, what: str, fn: Callable[[Any], Awaitable[T]], *, reconnect: bool = True,
    ) -> T:
        """``run`` without the translation: the backend exception it gives up with is
        raised as it is (the batcher translates it once per call it carried)."""
        # loop.run_aio_coroutine: trio-asyncio's own core of aio_as_trio, without its
        # wrapper object and the extra coroutine frame it puts around each call.
        return await self._retrying(
            what, lambda: self.loop.run_aio_coroutine(fn(self.client)), reconnect=reconnect)

    async def _retrying(
        self, what: str, attempt: Callable[[], Awaitable[T]], *, reconnect: bool = True,
    ) -> T:
        """Every exchange with the server goes through here (a hop over the asyncio
        bridge): ``await attempt()`` under the reply timeout, retried on a lost
        connection for up to ``reconnect_timeout`` s (unless ``reconnect`` is False)."""
        delay = _RECONNECT_DELAY
        give_up_at: float | None = None
        while True:
            try:
                if self.command_timeout is None:
                    return await attempt()
                # The reply timeout is kept here, one Trio scope per hop, rather than by
                # redis-py (an asyncio timer per reply: measured ~7% of W1's CPU). On expiry
                # the asyncio task is cancelled and redis-py drops the connection.
                with trio.move_on_after(self.command_timeout):
                    return await attempt()
                raise TimeoutError(f"no reply within {self.command_timeout:g}s")
            except BACKEND_ERRORS as exc:
                now = trio.current_time()
                if give_up_at is None:
                    give_up_at = now + self.reconnect_timeout
                if not reconnect or not is_disconnect(exc) or now >= give_up_at:
                    raise
                log.debug("redis %s: %s: connection lost (%s), retrying", self.url, what, exc)
            except asyncio.CancelledError as exc:  # not ours (ours arrives as trio.Cancelled)
                raise StoreError(
                    f"redis {self.url}: {what}: cancelled on the asyncio side") from exc
            await trio.sleep(min(delay, max(0.0, give_up_at - now)))
            delay = min(delay * 2, _RECONNECT_DELAY_CAP)

    async def run_batch(
        self, what: str, calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]],
    ) -> list[Any]:
        """``calls`` (``(method, args, kwargs)``) as one non-transactional pipeline, replies
        as with ``raise_on_error=False`` (a failed command's reply is its exception, not yet
        translated); retried whole on a lost connection for up to ``reconnect_timeout`` s.
        Sent by ``lean_pipeline``.

        Asyncio-flavored: the batcher's senders await it on the loop, so a batch costs no
        hop over the bridge. The reply timeout is the sender's ``reply_watch.ReplyWatch``;
        a timed-out round trip raises ``TimeoutError`` (not retried), as ``run`` does. The
        batcher hears when a wait for a lost connection starts and ends
        (``reconnect_wait``)."""
        client = self.client
        commands = [lean_pipeline.command(client, method, args, kwargs)
                    for method, args, kwargs in calls]
        if self.on_command is not None:
            for args, _ in commands:
                self.on_command(args)
        watch = reply_watch.CURRENT.get()
        delay = _RECONNECT_DELAY
        give_up_at: float | None = None
        while True:
            try:
                if watch is None:
                    return await lean_pipeline.execute(client, commands, self._connections)
                watch.start()
                try:
                    return await lean_pipeline.execute(client, commands, self._connections)
                finally:
                    watch.stop()
            except asyncio.CancelledError:
                if watch is not None and watch.timed_out():
                    raise TimeoutError(f"no reply within {watch.timeout:g}s") from None
                raise
            except BACKEND_ERRORS as exc:
                now = self.loop.time()
                if give_up_at is None:
                    give_up_at = now + self.reconnect_timeout
                if not is_disconnect(exc) or now >= give_up_at:
                    raise
                log.debug("redis %s: %s: connection lost (%s), retrying", self.url, what, exc)
            batcher = self._batcher
            if batcher is not None:
                batcher.reconnect_wait(True)
            try:
                await asyncio.sleep(min(delay, max(0.0, give_up_at - now)))
            finally:
                if batcher is not None:
                    batcher.reconnect_wait(False)
            delay = min(delay * 2, _RECONNECT_DELAY_CAP)

    async def release_connections(self) -> None:
        """Give the connections kept for batches back to the pool (before it closes); asyncio
        side (inside ``run``)."""
        await self._connections.release_all()

    def call(self, what: str, key: str, method: str, *args: Any, **kwargs: Any
             ) -> Awaitable[Any]:
        """One command: ``client.<method>(*args, **kwargs)``, to be awaited. Once
        ``start_batching`` ran, a short non-blocking command with plain arguments is queued
        and goes out with the others issued in the same Trio tick as one pipeline
        (``batcher.py``).

        A plain function handing back the coroutine to await, not a coroutine of its own:
        a waiting caller's every suspension and wake-up passes through each coroutine
        frame of its chain, and this one would add nothing but that cost."""
        batcher = self._batcher
        if batcher is not None and method in BATCHABLE and _plain(args, kwargs):
            return batcher.call(what, key, method, args, kwargs)

        async def go(client: Any) -> Any:
            return await getattr(client, method)(*args, **kwargs)

        return self.run(what, go, key=key)

    def call_plain(self, what: str, key: str, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Awaitable[Any]:
        """``call`` of a ``BATCHABLE`` method whose arguments are plain by construction
        (``str`` keys, ``bytes`` values, an ``int`` TTL: the payload store's), batched
        without ``call``'s type check of every argument (each payload read and write)."""
        batcher = self._batcher
        if batcher is not None:
            return batcher.call(what, key, method, args, kwargs)
        return self.call(what, key, method, *args, **kwargs)

    def call_then(self, what: str, key: str, method: str, args: tuple[Any, ...],
                  done: Callable[[Any], None]) -> bool:
        """``call_plain`` (no keyword arguments) whose reply goes to ``done`` instead of
        being awaited (``batcher.CommandBatcher.call_then``: None if it failed); False,
        with nothing sent, when commands are not batched (or the batcher is closing)."""
        batcher = self._batcher
        return batcher is not None and batcher.call_then(what, key, method, args, done)

    def script(self, what: str, key: str, source: str, keys: list[str],
               args: list[Any], *, plain: bool = False) -> Awaitable[Any]:
        """Run the Lua ``source`` (``EVALSHA``, atomic on the server) on ``keys``/``args``, to
        be awaited. A script the batcher merges (a step write, a create, a lease release)
        is queued as such (``CommandBatcher.script``), its wait handed back as ``call``
        does; any other goes through ``_script``. ``plain``: ``keys``/``args`` are of plain
        types only (``str``, ``bytes``, ``int``, ``float``): not checked one by one."""
        batcher = self._batcher
        if batcher is not None and (plain or (_PLAIN.issuperset(map(type, keys))
                                              and _PLAIN.issuperset(map(type, args)))):
            wait = batcher.script(what, key, source, keys, args)
            if wait is not None:
                return wait
        return self._script(what, key, source, keys, args, plain=plain)

    async def _script(self, what: str, key: str, source: str, keys: list[str],
                      args: list[Any], *, plain: bool = False) -> Any:
        """``script`` not merged: an ``EVALSHA`` batched like ``call`` when it can be; a
        server that does not know the script (``NOSCRIPT``) gets it loaded."""
        batcher = self._batcher
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        evalsha = (sha, len(keys), *keys, *args)
        if batcher is not None and (plain or _plain(evalsha, {})):
            try:
                return await batcher.call(what, key, "evalsha", evalsha, {})
            except rx.NoScriptError:
                pass
            # A fresh or flushed server: load it once (the callers that meet NOSCRIPT
            # while it loads wait for that load) and try once more, still batched.
            await self._load_script(batcher, what, key, sha, source)
            try:
                return await batcher.call(what, key, "evalsha", evalsha, {})
            except rx.NoScriptError:
                pass

        async def go(client: Any) -> Any:
            return await client.register_script(source)(keys=keys, args=args, client=client)

        return await self.run(what, go, key=key)

    async def _load_script(self, batcher: CommandBatcher, what: str, key: str, sha: str,
                           source: str) -> None:
        """``SCRIPT LOAD`` ``source`` once for every caller that met ``NOSCRIPT`` meanwhile
        (before: one per caller — hundreds on a fresh server under load). The loader gets
        its own error if the load fails; a waiter then retries and meets it (or
        ``NOSCRIPT`` and the direct path) itself."""
        loading = self._loading.get(sha)
        if loading is not None:
            await loading.wait()
            return
        loading = self._loading[sha] = trio.Event()
        try:
            await batcher.call(what, key, "script_load", (source,), {})
        finally:
            del self._loading[sha]
            loading.set()

    async def pipeline(
        self,
        what: str,
        key: str,
        commands: Iterable[tuple[str, tuple[Any, ...]]] | Callable[[Any], None],
        *,
        transaction: bool = True,
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Send commands in one round trip and return their replies. ``commands`` is a list
        of ``(method, args)`` or a function queueing them on the pipeline. With
        ``raise_on_error=False`` a failed command's reply is its exception (translated,
        naming that command's key — its first argument — when ``commands`` is a list)."""
        listed = None if callable(commands) else list(commands)  # may be sent twice (run)
        if (listed is not None and len(listed) == 1 and not transaction and raise_on_error
                and self._batcher is not None):
            # One command (a lone run's presence check): the batcher's round trip gives
            # the same reply or error without a bridge hop and redis-py's pipeline object
            # (measured: ~985k instructions alone, ~560k batched).
            method, args = listed[0]
            if method in BATCHABLE and _plain(args, {}):
                return [await self._batcher.call(what, key, method, args, {})]

        async def go(client: Any) -> list[Any]:
            async with client.pipeline(transaction=transaction) as pipe:
                if listed is None:
                    assert callable(commands)
                    commands(pipe)
                else:
                    for method, args in listed:
                        getattr(pipe, method)(*args)
                return list(await pipe.execute(raise_on_error=raise_on_error))

        replies = await self.run(what, go, key=key)
        if raise_on_error:
            return replies
        keys = [args[0] if args and isinstance(args[0], str) else key
                for _, args in listed] if listed is not None else [key] * len(replies)
        return [
            self.translate(r, what, k) if isinstance(r, Exception) else r
            for r, k in zip(replies, keys, strict=True)
        ]

    async def transaction(
        self, what: str, key: str, watch: Iterable[str], fn: Callable[[Any], Awaitable[T]]
    ) -> T:
        """Optimistic transaction: ``WATCH`` the keys, then ``fn(pipe)`` reads in immediate
        mode, calls ``pipe.multi()``, queues writes and returns ``await pipe.execute()``
        (or whatever it likes). Retried from the start when a watched key changed."""
        watched = list(watch)

        async def go(client: Any) -> T:
            async with client.pipeline(transaction=True) as pipe:
                for _ in range(MAX_WATCH_RETRIES):
                    try:
                        await pipe.watch(*watched)
                        return await fn(pipe)
                    except rx.WatchError:
                        await pipe.reset()
                        continue
            raise StoreError(
                f"redis {self.url}: {what}: key {key!r} kept changing "
                f"({MAX_WATCH_RETRIES} attempts)"
            )

        return await self.run(what, go, key=key)

    # ----------------------------------------------------------------------- errors

    def translate(self, exc: BaseException, what: str, key: str = "") -> CordtrioError:
        """The cordtrio error for a redis-py/asyncio/OS exception (``redis_errors``)."""
        return translate(exc, what, key, self.url, self._secrets)

__all__ = ["BATCHABLE", "RECONNECT_TIMEOUT", "RedisAdapter", "check_callbacks_as_asyncio_does",
           "run_ready_callbacks_per_tick"]
