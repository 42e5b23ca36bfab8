"""The Redis payload store's results read back where they were written: a store that
reads results (an engine's) answers a result it wrote itself (its process's worker)
without a round trip, and that answer is what Redis holds."""

from __future__ import annotations

import pytest

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis import payloads as payloads_module
from cordtrio.backends.redis.payloads import RedisPayloadStore
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.errors import NotFoundError, StoreError


async def read_from_redis(redis: RedisBackends, key: str) -> bytes:
    """``key`` read by a store that kept nothing: the general path, a GET."""
    return await RedisPayloadStore(redis.redis).get_result(key)


async def test_a_result_written_and_read_here_is_answered_as_redis_would(
        redis: RedisBackends) -> None:
    store = redis.payloads
    with pytest.raises(NotFoundError):
        await store.get_result("res:before")  # this store reads results from now on
    counter = CommandCounter(redis.redis)
    await store.put_result("res:a", b'{"ok": 1}')
    await store.put_result("res:b", bytearray(b"raw"))
    assert counter.counts["set"] == 2  # written to Redis all the same
    counter.reset()
    assert await store.get_result("res:a") == b'{"ok": 1}' == await read_from_redis(
        redis, "res:a")
    got = await store.get_result("res:b")
    assert got == b"raw" and type(got) is bytes
    assert counter.counts["get"] == 1  # the one read_from_redis made
    counter.reset()
    assert await store.get_result("res:a") == b'{"ok": 1}'  # a second read: from Redis
    assert counter.counts["get"] == 1
    counter.close()


async def test_a_store_that_never_read_a_result_keeps_none(redis: RedisBackends) -> None:
    """A worker's own process: its results are only written, never kept."""
    store = redis.payloads
    await store.put_result("res:w", b"w")
    counter = CommandCounter(redis.redis)
    assert await store.get_result("res:w") == b"w"
    assert counter.counts["get"] == 1
    counter.close()


async def test_a_deleted_or_overwritten_result_reads_as_redis_holds_it(
        redis: RedisBackends) -> None:
    store = redis.payloads
    with pytest.raises(NotFoundError):
        await store.get_result("res:before")
    await store.put_result("res:d", b"d")
    await store.delete("res:d")
    with pytest.raises(NotFoundError, match="res:d"):
        await store.get_result("res:d")
    await store.put_result("res:o", b"1")
    await store.put_result("res:o", b"2")
    assert await store.get_result("res:o") == b"2" == await read_from_redis(redis, "res:o")


async def test_a_failed_write_keeps_nothing_of_the_key(redis: RedisBackends,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = redis.payloads
    with pytest.raises(NotFoundError):
        await store.get_result("res:before")
    await store.put_result("res:f", b"first")

    def failing_put(key: str, data: bytes) -> None:
        raise StoreError("redis: put payload: no connection")

    monkeypatch.setattr(store, "_put", failing_put)
    with pytest.raises(StoreError):
        await store.put_result("res:f", b"second")
    monkeypatch.undo()
    assert await store.get_result("res:f") == b"first" == await read_from_redis(redis, "res:f")


async def test_kept_results_are_bounded_oldest_dropped_first(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads_module, "RECENT_RESULTS_BYTES", 10)
    store = redis.payloads
    with pytest.raises(NotFoundError):
        await store.get_result("res:before")
    for key in ("res:1", "res:2", "res:3"):
        await store.put_result(key, b"four")  # 3 x 4 bytes: the first is dropped
    await store.put_result("res:big", b"x" * 11)  # larger than the bound: not kept
    counter = CommandCounter(redis.redis)
    for key in ("res:3", "res:2", "res:1", "res:big"):
        assert await store.get_result(key) == await read_from_redis(redis, key)
    assert counter.counts["get"] == 4 + 2  # read_from_redis's, then res:1's and res:big's
    counter.close()
