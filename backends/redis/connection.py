"""``connect(url)``: the trio-asyncio loop, one connection pool, and the three Redis backends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
import trio
import trio_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from cordtrio.errors import CordtrioError, StoreError
from cordtrio.ports import Clock

from .adapter import RECONNECT_TIMEOUT, RedisAdapter
from .base import DEFAULT_RETENTION_SECONDS
from .batcher import CommandBatcher
from .loop_tuning import (
    check_callbacks_as_asyncio_does,
    run_ready_callbacks_per_tick,
    watch_fds_without_synchronizing,
)
from .payloads import DEFAULT_TTL_SECONDS, RedisPayloadStore
from .redis_errors import mask_url
from .schemas import RedisSchemaRegistry
from .script_merge import MERGED
from .store import RedisStore

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds ``connect`` waits for the first PING before giving up."""

SOCKET_TIMEOUT = 30.0
"""Seconds a command may wait for its reply before it fails (a ``StoreError``)."""

MAX_CONNECTIONS = 64
"""Connections in the pool: the most Redis commands in flight at once."""

POOL_WAIT_TIMEOUT = 30.0
"""Seconds a command waits for a free connection before it fails (a ``StoreError``)."""

CLOSE_TIMEOUT = 2.0


try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency of the redis extra
    _hiredis_pack = None  # type: ignore[assignment]


class _HiredisPackingConnection(aredis.Connection):
    """redis-py's asyncio connection, packing commands with hiredis's C packer.

    redis-py uses hiredis for *parsing* replies but packs asyncio commands in Python, one
    ``Encoder.encode`` per argument: a fenced run write is ~80 arguments, and packing was the
    largest single cost of W1 (~15% of the engine's CPU). The bytes are the same (checked for
    str, bytes, int, float and memoryview); what hiredis refuses (a bool, None, a
    bytearray...) takes redis-py's path, which encodes or refuses it as before.
    ``rediss://`` and ``unix://`` URLs keep redis-py's own connection classes."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _hiredis_pack is None:
            return super().pack_command(*args)
        head = args[0]
        packed = args  # not copied unless the name is several words ("SCRIPT LOAD"): a
        if isinstance(head, str):  # merged batch call has thousands of arguments
            if head.split() != [head]:
                packed = (*head.encode().split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            packed = (*head.split(), *args[1:])
        try:
            # hiredis refuses (TypeError) what it cannot pack as redis-py would: a bool,
            # None, a bytearray, an int enum... Those take redis-py's path, which encodes
            # or refuses them. Trying first costs nothing per argument; checking each one's
            # type (a merged batch call has thousands) did.
            return [_hiredis_pack(packed)]
        except TypeError:
            return super().pack_command(*args)


@dataclass
class RedisBackends:
    """What ``connect`` yields: the three backends over one connection pool."""

    store: RedisStore
    payloads: RedisPayloadStore
    schemas: RedisSchemaRegistry
    redis: RedisAdapter
    """The Trio→asyncio bridge (and its ``client``), for tools and tests."""

    @property
    def url(self) -> str:
        """The URL connected to, password masked."""
        return self.redis.url


@asynccontextmanager
async def connect(
    url: str,
    *,
    payload_ttl_seconds: int | None = DEFAULT_TTL_SECONDS,
    retention_seconds: float | None = DEFAULT_RETENTION_SECONDS,
    client: Any = None,
    clock: Clock | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float | None = SOCKET_TIMEOUT,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> AsyncIterator[RedisBackends]:
    """Open a trio-asyncio loop and one Redis connection pool for ``url``, check the server
    answers (PING), and yield ``RedisBackends`` (``.store``, ``.payloads``, ``.schemas``).
    The pool and the loop are closed on exit.

    A bad URL, a refused or unreachable server or a failed AUTH raise ``StoreError`` (a
    ``CordtrioError``) naming the URL, password masked, within ``connect_timeout`` seconds.
    Once connected, a call that finds the connection lost (a Redis restart) retries for up to
    ``reconnect_timeout`` seconds before it raises ``StoreError`` naming the URL.

    ``client`` uses an existing ``redis.asyncio.Redis`` (or ``fakeredis.FakeAsyncRedis``)
    instead of creating one from ``url`` (which then only names it in messages); it is not
    closed on exit, but its connections — bound to this block's loop — are dropped.
    ``clock`` stamps the timestamps the store fills in; ``payload_ttl_seconds`` (``None``: no
    expiry) applies to every payload written. ``retention_seconds`` (default 7 days; ``0`` or
    ``None`` keeps everything): a run that finishes expires that long after its last write,
    with its timeline and idempotency key (``EXPIRE`` in the same write), and listings drop
    the ids of expired runs from the indexes as they meet them. At most ``max_connections``
    commands are in flight at once; further ones wait (up to 30 s) for a free connection.

    Timers of redis-py run on the asyncio loop, whose time is Trio's clock: do not combine a
    real server with ``trio.testing.MockClock(autojump_threshold=0)``, which would jump the
    clock while a reply is in flight and time the command out (fakeredis does no I/O and is
    fine with it).
    """
    shown = mask_url(url) if client is None else (url or "fakeredis")
    own = client is None
    if own:
        try:
            # A blocking pool: with hundreds of runs in flight, commands wait for a free
            # connection instead of failing with "too many connections" (redis-py's default
            # pool raises at once when all are busy).
            pool = aredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=POOL_WAIT_TIMEOUT,
                decode_responses=False,
                socket_connect_timeout=connect_timeout,
                socket_timeout=None,  # the adapter times each call out (command_timeout)
                connection_class=_HiredisPackingConnection,  # a URL's scheme may override
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                health_check_interval=30,
            )
            client = aredis.Redis(connection_pool=pool)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise StoreError(f"redis {shown}: bad URL: {exc}") from None
    leaf: BaseException | None = None
    from_body: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as loop:
            run_ready_callbacks_per_tick(loop)
            check_callbacks_as_asyncio_does(loop)
            watch_fds_without_synchronizing(loop)
            adapter = RedisAdapter(client, loop, url if own else shown,
                                   reconnect_timeout=reconnect_timeout,
                                   command_timeout=socket_timeout)
            batcher: CommandBatcher | None = None
            try:
                await _ping(adapter, shown, connect_timeout)
                await _load_scripts(adapter)
                batcher = CommandBatcher(adapter, MERGED)
                adapter.start_batching(batcher)
                try:
                    yield RedisBackends(
                        store=RedisStore(adapter, clock=clock,
                                         retention_seconds=retention_seconds),
                        payloads=RedisPayloadStore(adapter, ttl_seconds=payload_ttl_seconds),
                        schemas=RedisSchemaRegistry(adapter),
                        redis=adapter,
                    )
                except BaseException as exc:
                    from_body = exc
                    raise
            finally:
                adapter.stop_batching()
                await _close(adapter, own, batcher)
    except BaseExceptionGroup as group:
        # trio-asyncio's nurseries wrap whatever leaves the block (our errors, the body's,
        # Cancelled) in exception groups: hand a lone exception back as itself.
        if from_body is not None and _leaves(group) == _leaves(from_body):
            leaf = from_body  # exactly what the body raised (a group of its own stays one)
        else:
            leaf = _lone(group)
        if leaf is None:
            raise
    if leaf is not None:
        raise leaf


def _leaves(exc: BaseException) -> list[int]:
    """Identities of the exceptions inside ``exc`` (itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [id(exc)]


def _lone(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single exception inside (nested) one-member groups, or None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def _ping(adapter: RedisAdapter, shown: str, timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            await adapter.run("ping", lambda client: client.ping(), reconnect=False)
    except trio.TooSlowError:
        raise StoreError(
            f"redis {shown}: cannot connect: no answer to PING within {timeout:g}s"
        ) from None
    except CordtrioError as exc:
        detail = str(exc)
        prefix = f"redis {adapter.url}: ping: "
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        raise StoreError(f"redis {shown}: cannot connect: {detail}") from None


async def _load_scripts(adapter: RedisAdapter) -> None:
    """``SCRIPT LOAD`` the scripts of an engine step (alone and merged, ``script_merge``)
    up front, in one round trip: otherwise the first calls of a busy engine all meet
    ``NOSCRIPT`` and are sent twice. A server that refuses is left alone: the calls load
    what they need when they meet ``NOSCRIPT``."""
    try:
        await adapter.pipeline("load scripts", "", [
            ("script_load", (source,)) for source in (*MERGED.sources, MERGED.source)],
            transaction=False)
    except CordtrioError as exc:
        log.info("%s: scripts not loaded up front: %s", adapter.url, exc)


async def _close(adapter: RedisAdapter, own: bool, batcher: CommandBatcher | None) -> None:
    """Stop the batcher's senders, then close our pool (or drop a caller's client's
    connections) while the loop still runs."""
    async def close(c: Any) -> None:
        await adapter.release_connections()
        if own:
            await c.aclose(close_connection_pool=True)
        else:
            await c.connection_pool.disconnect()

    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        scope.shield = True
        try:
            if batcher is not None:
                await batcher.aclose()
            await adapter.run("close", close)
        except CordtrioError as exc:
            log.warning("closing %s: %s", adapter.url, exc)


__all__ = ["CONNECT_TIMEOUT", "RedisBackends", "connect"]
