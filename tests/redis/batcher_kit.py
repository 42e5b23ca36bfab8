"""What the batcher's tests share: a deadline and a count of the pipelines sent."""

from __future__ import annotations

from typing import Any

from cordtrio.backends.redis import RedisBackends

DEADLINE = 20


def count_round_trips(redis: RedisBackends) -> list[str]:
    """Hook the batcher's exchanges with the server: one entry (its ``what``) per
    pipeline sent."""
    adapter = redis.redis
    hops: list[str] = []
    original = adapter.run_batch

    async def counted(what: str, calls: Any) -> Any:
        hops.append(what)
        return await original(what, calls)

    adapter.run_batch = counted  # type: ignore[method-assign]
    return hops
