"""Run idempotency keys in Redis: ``wf:run:idempotency:<key>`` holds the run id, claimed
with ``SET NX``.
"""

from __future__ import annotations

from cordtrio.errors import ValidationError

from .base import RedisStoreBase
from .keys import idempotency_key
from .run_hash import text


class RedisIdempotency(RedisStoreBase):
    """Mixin of ``RedisStore``: claim, read and delete idempotency keys."""

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        """Claim ``key`` for ``run_id`` unless it is already claimed; True if claimed now."""
        if not key or not run_id:
            raise ValidationError("idempotency key and run id required")
        rkey = idempotency_key(key)
        return bool(await self._redis.call("claim idempotency key", rkey, "set", rkey, run_id,
                                           nx=True))

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        rkey = idempotency_key(key)
        raw = await self._redis.call("get idempotency key", rkey, "get", rkey)
        return None if raw is None else text(raw)

    async def delete_run_idempotency_key(self, key: str) -> None:
        rkey = idempotency_key(key)
        await self._redis.call("delete idempotency key", rkey, "delete", rkey)
