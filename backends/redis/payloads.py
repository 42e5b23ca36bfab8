"""Redis payload store: job inputs at ``ctx:<job>`` and results at ``res:<job>`` (SPEC §11),
each written with ``SET key value EX ttl`` (default 24 h), so Redis expires them itself."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from cordtrio.errors import NotFoundError
from cordtrio.payloads import CONTEXT_PREFIX, RESULT_PREFIX, check_payload_key

from .adapter import RedisAdapter

DEFAULT_TTL_SECONDS = 24 * 3600


class RedisPayloadStore:
    """Bytes by key with a TTL. ``ttl_seconds=None`` (or ``<= 0``) keeps entries forever.

    Only keys of the payload namespace are read or written: ``*_context`` take ``ctx:<job>``,
    ``*_result`` ``res:<job>``; any other key (``secret:token``, ``wf:run:<id>``) raises
    ``PayloadPointerError`` before a command is sent (``cordtrio.payloads``).

    The TTL is Redis's own (wall-clock) expiry: unlike the memory payload store it does not
    follow Trio's clock, so ``MockClock`` cannot make an entry expire.
    """

    def __init__(self, redis: RedisAdapter, *, ttl_seconds: int | None = DEFAULT_TTL_SECONDS
                 ) -> None:
        self._redis = redis
        self.ttl_seconds = int(ttl_seconds) if ttl_seconds and ttl_seconds > 0 else None

    @property
    def adapter(self) -> RedisAdapter:
        """The connection it writes through (a ``RedisStore`` on the same one writes job
        inputs in its run writes: ``RedisStore.commits_payloads_of``)."""
        return self._redis

    # Each read and write is one coroutine frame over the batcher's: a waiting caller's
    # every suspension and wake-up passes through each frame of its chain.
    async def put_context(self, key: str, data: bytes) -> None:
        await self._put(check_payload_key(key, CONTEXT_PREFIX), data)

    async def get_context(self, key: str) -> bytes:
        key = check_payload_key(key, CONTEXT_PREFIX)
        return _found(key, await self._redis.call_plain("get payload", key, "get", (key,), {}))

    async def put_result(self, key: str, data: bytes) -> None:
        await self._put(check_payload_key(key, RESULT_PREFIX), data)

    async def get_result(self, key: str) -> bytes:
        key = check_payload_key(key, RESULT_PREFIX)
        return _found(key, await self._redis.call_plain("get payload", key, "get", (key,), {}))

    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        check_payload_key(key)
        await self._redis.call("delete payload", key, "delete", key)

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


__all__ = ["DEFAULT_TTL_SECONDS", "RedisPayloadStore"]
