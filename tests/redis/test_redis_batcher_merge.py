"""The Redis batcher's merged commands (``batcher.py``, ``script_merge.py``): a batch's
store scripts and payload ``SET``s as one ``EVALSHA``, its ``GET``s as one ``MGET``, never
across a call sent as it is, and the merged script loaded again when the server forgot it."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio
from batcher_kit import DEADLINE, count_round_trips

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.errors import NotFoundError


async def test_scripts_are_batched_and_reloaded_after_a_script_flush(
        redis: RedisBackends) -> None:
    store = redis.store
    await redis.redis.call("flush scripts", "", "script_flush")
    hops = count_round_trips(redis)
    got: dict[str, bool] = {}

    async def acquire(run_id: str) -> None:
        got[run_id] = await store.acquire_lease(run_id, "engine-a", 30.0)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:  # the server knows no script: NOSCRIPT
            for i in range(5):
                nursery.start_soon(acquire, f"r{i}")
        assert got == {f"r{i}": True for i in range(5)}
        hops.clear()
        async with trio.open_nursery() as nursery:  # now it does: one pipeline for all
            for i in range(5, 10):
                nursery.start_soon(acquire, f"r{i}")
    assert all(got[f"r{i}"] for i in range(10))
    assert len(hops) == 1, hops
    assert await store.lease_owner("r7") == "engine-a"


async def test_concurrent_gets_are_one_mget(redis: RedisBackends) -> None:
    for i in range(20):
        await redis.payloads.put_result(f"res:job-{i}", b"value %d" % i)
    counter = CommandCounter(redis.redis)
    got: dict[int, bytes] = {}

    async def get(i: int) -> None:
        got[i] = await redis.payloads.get_result(f"res:job-{i}")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(get, i)
    counter.close()
    assert got == {i: b"value %d" % i for i in range(20)}
    assert dict(counter.counts) == {"mget": 1}


async def test_a_script_is_loaded_once_for_every_caller_that_met_noscript(
        redis: RedisBackends) -> None:
    adapter = redis.redis
    assert adapter._batcher is not None
    for i in range(20):  # held already: extending them takes the acquire script
        assert await redis.store.acquire_lease(f"r{i}", "engine-a", 30.0)
    await adapter.call("flush scripts", "", "script_flush")
    sent: list[str] = []
    original = adapter._batcher.call

    async def recorded(what: str, key: str, method: str, *rest: Any) -> Any:
        sent.append(method)
        return await original(what, key, method, *rest)

    adapter._batcher.call = recorded  # type: ignore[method-assign]
    got: dict[str, bool] = {}

    async def acquire(run_id: str) -> None:
        got[run_id] = await redis.store.acquire_lease(run_id, "engine-a", 30.0)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:  # 20 callers meet NOSCRIPT together
            for i in range(20):
                nursery.start_soon(acquire, f"r{i}")
    assert got == {f"r{i}": True for i in range(20)}
    assert sent.count("script_load") == 1, sent
    assert sent.count("evalsha") == 40  # each: NOSCRIPT, then the batched retry


async def test_a_lone_call_is_sent_as_it_is_as_the_general_path_would(
        redis: RedisBackends) -> None:
    """A batch of one call skips the merging (``_send``): the general path would not merge a
    lone call of any mergeable kind either."""
    from cordtrio.backends.redis.batcher import _Call
    from cordtrio.backends.redis.leases import RELEASE_SCRIPT
    from cordtrio.backends.redis.script_merge import MERGED

    batcher: Any = redis.redis._batcher
    sha = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()
    assert MERGED.mergeable("evalsha", (sha,))  # a kind the batcher merges
    for method, args, kwargs in [("get", ("k",), {}), ("set", ("k", b"v"), {"ex": 60}),
                                 ("evalsha", (sha, 1, "k", "owner"), {})]:
        call = _Call("w", "k", method, args, kwargs)
        assert batcher._merge([call]) == [call]
    await redis.payloads.put_result("res:lone", b"lone")
    assert await redis.payloads.get_result("res:lone") == b"lone"


def _sent(units: list[Any]) -> list[Any]:
    """``_merge``'s units as what is sent: a group by its kind and members' methods."""
    return [(u.kind, [m.method for m in u.members]) if hasattr(u, "members") else u.method
            for u in units]


async def test_calls_not_merged_go_in_the_order_they_were_made(
        redis: RedisBackends) -> None:
    """Calls are merged only between two calls sent as they are, never across one: a caller
    cancelled while its ``SET`` was queued may delete the key next, in the same batch, and
    the key must not come back; nor may a delete made first remove a later ``SET`` or be
    applied after the caller's next script call (a store script call goes as a merged
    ``EVALSHA`` even alone, in its place)."""
    from cordtrio.backends.redis.batcher import _Call
    from cordtrio.backends.redis.leases import RELEASE_SCRIPT
    from cordtrio.backends.redis.script_merge import MERGED

    batcher: Any = redis.redis._batcher
    number = MERGED.by_source[RELEASE_SCRIPT]
    batch = [_Call("w", "a", "get", ("a",), {}),
             _Call("w", "res:k", "set", ("res:k", b"v"), {"ex": 60}),
             _Call("w", "res:k", "delete", ("res:k",), {}),
             _Call("w", "b", "get", ("b",), {})]
    assert _sent(batcher._merge(batch)) == ["set", "get", "delete", "get"]
    batch = [_Call("w", "k", "delete", ("k",), {}),
             _Call("w", "k", "script", (number, ["k"], ["owner"]), {})]
    assert _sent(batcher._merge(batch)) == ["delete", ("evalsha", ["script"])]
    batch = [_Call("w", "res:k", "delete", ("res:k",), {}),
             _Call("w", "res:k", "set", ("res:k", b"v"), {"ex": 60}),
             _Call("w2", "r", "script", (number, ["r"], ["o"]), {})]
    assert _sent(batcher._merge(batch)) == ["delete", ("evalsha", ["set", "script"])]
    # with nothing sent as it is, one EVALSHA and one MGET (the writes first)
    batch = [_Call("w", "a", "get", ("a",), {}),
             _Call("w", "res:k", "set", ("res:k", b"v"), {"ex": 60}),
             _Call("w2", "r", "script", (number, ["r"], ["o"]), {}),
             _Call("w", "b", "get", ("b",), {})]
    assert _sent(batcher._merge(batch)) == [("evalsha", ["set", "script"]),
                                            ("mget", ["get", "get"])]


async def test_a_write_after_a_merged_call_stays_after_it_when_the_server_forgot_the_script(
        redis: RedisBackends) -> None:
    """A server that does not know the merged script (restarted, ``SCRIPT FLUSH``): a
    caller's ``SET`` (merged) then its ``DEL`` of the same key, in one batch, are applied in
    that order (the script is loaded ahead of the batch, not the merged call sent again
    after the ``DEL``), and each gets its reply."""
    batcher = redis.redis._batcher
    assert batcher is not None
    await redis.redis.run("flush the scripts", lambda c: c.script_flush())
    got: dict[str, Any] = {}
    done = trio.Event()

    def reply(name: str) -> Any:
        def answer(value: Any) -> None:
            got[name] = value
            if len(got) == 3:
                done.set()
        return answer

    with trio.fail_after(DEADLINE):
        assert batcher.call_then("w", "res:k", "set", ("res:k", b"v", 60), reply("set k"))
        assert batcher.call_then("w", "res:j", "set", ("res:j", b"v", 60), reply("set j"))
        assert batcher.call_then("w", "res:k", "delete", ("res:k",), reply("delete k"))
        await done.wait()
    assert got == {"set k": True, "set j": True, "delete k": 1}
    assert await redis.payloads.get_result("res:j") == b"v"
    with pytest.raises(NotFoundError):
        await redis.payloads.get_result("res:k")
