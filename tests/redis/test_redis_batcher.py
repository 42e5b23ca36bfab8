"""The Redis adapter's command batcher (``batcher.py``): concurrent single commands share one
pipeline, yet each caller gets its own reply or its own error, as if it had been sent alone.
(Merged commands: ``test_redis_batcher_merge.py``; the trio-asyncio loop under it:
``test_redis_loop.py``.)"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import pytest
import trio
from batcher_kit import DEADLINE, count_round_trips

from cordtrio.backends.redis import RedisBackends, RedisDataError, connect
from cordtrio.backends.redis.testing import RedisServer
from cordtrio.errors import NotFoundError, StoreError


async def put_then_get_concurrently(redis: RedisBackends, calls: int) -> dict[int, bytes]:
    """``calls`` tasks at once, each storing its own payload and reading it back; what
    each read."""
    payloads = redis.payloads
    got: dict[int, bytes] = {}

    async def put_then_get(i: int) -> None:
        await payloads.put_result(f"res:job-{i}", b"value %d" % i)
        got[i] = await payloads.get_result(f"res:job-{i}")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for i in range(calls):
                nursery.start_soon(put_then_get, i)
    return got


async def test_concurrent_calls_share_one_pipeline(redis: RedisBackends) -> None:
    hops = count_round_trips(redis)
    got = await put_then_get_concurrently(redis, 50)
    assert got == {i: b"value %d" % i for i in range(50)}
    assert len(hops) == 2, hops  # 50 SETs in one pipeline, then 50 GETs in another
    assert "batched" in hops[0]


async def test_more_calls_than_a_pipeline_holds_go_in_several_each_with_its_reply(
        redis: RedisBackends) -> None:
    """Past ``MAX_BATCH`` commands the rest go in the next pipelines (several in flight,
    so the server runs one while the engine reads another); every caller still gets its
    own reply."""
    from cordtrio.backends.redis.batcher import MAX_BATCH

    hops = count_round_trips(redis)
    calls = 2 * MAX_BATCH + 10
    got = await put_then_get_concurrently(redis, calls)
    assert got == {i: b"value %d" % i for i in range(calls)}
    # pipelines of at most MAX_BATCH commands (a caller's GET may ride with the SETs of a
    # later pipeline): at least 2 * calls / MAX_BATCH hops, where one batch per tick made 2
    assert len(hops) >= -(-2 * calls // MAX_BATCH) > 2, hops


async def test_an_error_stays_with_its_call(redis: RedisBackends) -> None:
    await redis.redis.call("setup", "res:h", "hset", "res:h", "field", "value")
    await redis.payloads.put_result("res:ok", b"fine")
    hops = count_round_trips(redis)
    outcomes: dict[str, Any] = {}

    async def get(key: str) -> None:
        try:
            outcomes[key] = await redis.payloads.get_result(key)
        except Exception as exc:
            outcomes[key] = exc

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for key in ("res:h", "res:ok", "res:missing"):
                nursery.start_soon(get, key)
    # one MGET for the three; the two it found no string at (a hash, nothing) asked again
    # with GET, which tells them apart
    assert len(hops) == 2, hops
    assert outcomes["res:ok"] == b"fine"
    assert isinstance(outcomes["res:h"], RedisDataError)
    assert "'res:h'" in str(outcomes["res:h"])  # names the key of that call
    assert isinstance(outcomes["res:missing"], NotFoundError)


class _FirstBatchHeld:
    """Holds the adapter's first round trip in flight until ``release`` is set and records
    every batch sent (``hops``); ``get(i)`` reads ``k<i>`` into ``got``."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.hops: list[str] = []
        self.release = asyncio.Event()
        self.got: dict[int, bytes] = {}
        self._original = adapter.run_batch
        adapter.run_batch = self._held

    async def _held(self, what: str, calls: Any) -> Any:
        self.hops.append(what)
        if len(self.hops) == 1:
            await self.release.wait()
        return await self._original(what, calls)

    async def get(self, i: int) -> None:
        self.got[i] = await self.adapter.call("get", f"k{i}", "get", f"k{i}")

    async def first_in_flight(self, nursery: trio.Nursery) -> None:
        """Start ``get(0)`` and return once its round trip is in flight (and held)."""
        nursery.start_soon(self.get, 0)
        while not self.hops:
            await trio.sleep(0)


async def test_calls_made_while_a_pipeline_is_in_flight_go_out_together_after_it(
        redis: RedisBackends) -> None:
    """A call made while a pipeline is in flight (and no full batch waits) is not sent in a
    pipeline of its own: it waits for that round trip and goes out with every call made
    meanwhile, each in a tick of its own here, as one pipeline; each gets its own reply."""
    adapter = redis.redis
    for i in range(5):
        await adapter.call("setup", f"k{i}", "set", f"k{i}", f"v{i}")
    held = _FirstBatchHeld(adapter)
    hops, release, got, get = held.hops, held.release, held.got, held.get

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await held.first_in_flight(nursery)
            for i in range(1, 5):
                nursery.start_soon(get, i)
                for _ in range(3):  # a few ticks apart: the sender would have taken it
                    await trio.sleep(0)
            assert hops == ["get (+0 batched)"]
            release.set()
    assert got == {i: b"v%d" % i for i in range(5)}
    assert hops == ["get (+0 batched)", "get (+3 batched)"]


async def test_without_a_reply_timeout_calls_are_not_held_behind_a_batch_in_flight(
        redis_url: str) -> None:
    """With ``socket_timeout=None`` nothing bounds a batch in flight (one connection may be
    half-open and never answer): a call made meanwhile goes out on another connection at
    once instead of waiting for that batch."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()) \
        if redis_url == "fakeredis" else None
    async with connect(redis_url, client=client, socket_timeout=None) as backends:
        adapter = backends.redis
        await adapter.call("setup", "k1", "set", "k1", "v1")
        held = _FirstBatchHeld(adapter)  # the first round trip never gets its reply
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                await held.first_in_flight(nursery)
                await held.get(1)
                assert held.got == {1: b"v1"}
                assert held.hops == ["get (+0 batched)", "get (+0 batched)"]
                nursery.cancel_scope.cancel()


async def test_calls_are_not_held_behind_a_batch_waiting_out_a_lost_connection(
        redis: RedisBackends) -> None:
    """While the batch in flight waits for a lost connection to come back, the calls queued
    behind it go out at once in a pipeline of their own (each then waits it out for
    itself, as it would alone), and so do the calls made meanwhile."""
    adapter = redis.redis
    batcher = adapter._batcher
    assert batcher is not None
    for i in range(4):
        await adapter.call("setup", f"k{i}", "set", f"k{i}", f"v{i}")
    held = _FirstBatchHeld(adapter)
    hops, release, got, get = held.hops, held.release, held.got, held.get

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await held.first_in_flight(nursery)
            nursery.start_soon(get, 1)
            for _ in range(3):
                await trio.sleep(0)
            assert hops == ["get (+0 batched)"]  # held behind the first
            batcher.reconnect_wait(True)  # as run_batch does before each reconnection wait
            while len(hops) < 2:
                await trio.sleep(0)
            nursery.start_soon(get, 2)
            while len(got) < 2:  # both answered: their senders are idle again
                await trio.sleep(0)
            batcher.reconnect_wait(False)
            nursery.start_soon(get, 3)
            for _ in range(3):
                await trio.sleep(0)
            assert len(hops) == 3  # held again: the first batch is still in flight
            release.set()
    assert got == {i: b"v%d" % i for i in range(4)}
    assert hops == ["get (+0 batched)"] * 4


async def test_a_cancelled_caller_does_not_disturb_the_others(redis: RedisBackends) -> None:
    await redis.payloads.put_result("res:a", b"a")
    results: list[bytes] = []

    async def get() -> None:
        results.append(await redis.payloads.get_result("res:a"))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as doomed:
                nursery.start_soon(get)
                doomed.cancel()
                with pytest.raises(trio.Cancelled):
                    await redis.payloads.get_result("res:a")
        assert doomed.cancelled_caught is False  # the Cancelled went to pytest.raises
    assert results == [b"a"]
    assert await redis.payloads.get_result("res:a") == b"a"  # the batcher still works


async def test_a_lost_server_fails_every_batched_call(disposable_server: RedisServer) -> None:
    async with connect(disposable_server.url, reconnect_timeout=0.3) as redis:
        await redis.payloads.put_result("res:x", b"x")
        disposable_server.stop()
        errors: dict[str, BaseException] = {}

        async def get(key: str) -> None:
            try:
                await redis.payloads.get_result(key)
            except StoreError as exc:
                errors[key] = exc

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for key in ("res:x", "res:y"):
                    nursery.start_soon(get, key)
        assert set(errors) == {"res:x", "res:y"}
        assert all("get payload" in str(e) for e in errors.values())


async def test_a_reply_that_never_comes_times_out_and_the_pool_recovers(
        redis_server: RedisServer) -> None:
    async with connect(redis_server.url, socket_timeout=0.3) as redis:
        await redis.payloads.put_result("res:t", b"t")
        started = trio.current_time()
        with trio.fail_after(DEADLINE), pytest.raises(StoreError, match=r"no reply within 0\.3s"):
            # BLPOP that the server holds for 2 s: the adapter gives up after 0.3 s
            await redis.redis.call("wait", "empty", "blpop", ["cordtrio-test:empty"], timeout=2)
        assert trio.current_time() - started < 1.5
        # the abandoned connection is not reused with its late reply: replies stay in step
        for _ in range(3):
            assert await redis.payloads.get_result("res:t") == b"t"


def test_the_hiredis_packer_sends_the_bytes_redis_py_would() -> None:
    import redis.asyncio as aredis
    import redis.exceptions as rx

    from cordtrio.backends.redis.connection import _HiredisPackingConnection

    ours, theirs = _HiredisPackingConnection(), aredis.Connection()
    for args in [("SET", "k", b"v\x00\xff", "EX", 86400), ("ZADD", "z", 1732550000.123456, "m"),
                 ("HSET", "h", "f\u00e9", "x" * 10_000), ("SCRIPT LOAD", "return 1"),
                 (b"CONFIG GET", b"maxmemory"), ("EVALSHA", "ab", 1, "k", -5, 0.1),
                 ("ZADD", "z", 1e20, "m", 1e-07, "n", float("inf"), "o"),
                 ("SET", "k", memoryview(b"v")), ("SET", "k", bytearray(b"v")),
                 ("SET", _Text("k"), b"v"), ("EXPIRE", "k", _Number.TTL)]:
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args)), args
    for refused in (True, None, object()):  # what redis-py refuses is still refused
        with pytest.raises(rx.DataError):
            ours.pack_command("SET", "k", refused)


class _Text(str):
    """A ``str`` subclass (hiredis packs it as the ``str`` it is)."""


class _Number(enum.IntEnum):
    """An ``int`` enum (hiredis refuses it: redis-py's path encodes it)."""

    TTL = 60


async def test_a_bug_in_one_batch_reaches_its_callers_and_the_batcher_lives_on(
        redis: RedisBackends) -> None:
    adapter = redis.redis
    original = adapter.run_batch
    calls = 0

    async def broken_once(what: str, batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("a bug")
        return await original(what, batch)

    adapter.run_batch = broken_once  # type: ignore[method-assign]
    with trio.fail_after(DEADLINE):
        with pytest.raises(ZeroDivisionError):
            await redis.payloads.put_result("res:b", b"b")
        await redis.payloads.put_result("res:b", b"b")
        assert await redis.payloads.get_result("res:b") == b"b"


async def test_a_batched_reply_that_never_comes_times_out_and_the_batcher_recovers(
        disposable_server: RedisServer) -> None:
    async with connect(disposable_server.url, socket_timeout=0.2) as redis:
        await redis.payloads.put_result("res:p", b"p")
        # every client's commands wait 600 ms on the server: the batched GET gets no reply
        await redis.redis.run("pause", lambda client: client.client_pause(600))
        started = trio.current_time()
        with trio.fail_after(DEADLINE), pytest.raises(StoreError, match=r"no reply within 0\.2s"):
            await redis.payloads.get_result("res:p")
        assert trio.current_time() - started < 0.55
        await trio.sleep(0.6)
        # the abandoned connection is not reused with its late reply: replies stay in step
        for _ in range(3):
            got = await put_then_get_concurrently(redis, 5)
            assert got == {i: b"value %d" % i for i in range(5)}
        assert await redis.payloads.get_result("res:p") == b"p"


async def test_calls_while_the_batcher_closes_fail_as_the_connection_closing(
        redis: RedisBackends) -> None:
    batcher = redis.redis._batcher
    assert batcher is not None
    failed: list[BaseException] = []

    async def get(key: str) -> None:
        try:
            await batcher.call("get", key, "get", (key,), {})
        except StoreError as exc:
            failed.append(exc)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for key in ("a", "b"):
                nursery.start_soon(get, key)
            await batcher.aclose()  # type: ignore[attr-defined]
        await get("c")  # after the close
    assert len(failed) == 3
    assert all("connection closing" in str(e) for e in failed)


async def test_a_call_with_plain_arguments_answers_as_the_checked_call(
        redis: RedisBackends) -> None:
    """``call_plain`` (the payload store's reads and writes, not type-checked) gives what
    ``call`` gives, alone and batched with others, for a stored key, a missing one and a
    write with and without a TTL."""
    adapter = redis.redis
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("set", ("res:plain-a", b"a"), {"ex": 60}),
        ("set", ("res:plain-b", b"b"), {"ex": None}),
        ("get", ("res:plain-a",), {}),
        ("get", ("res:plain-b",), {}),
        ("get", ("res:plain-missing",), {}),
    ]
    for method, args, kwargs in calls:  # one at a time
        assert (await adapter.call_plain("plain", args[0], method, args, kwargs)
                == await adapter.call("checked", args[0], method, *args, **kwargs))

    async def batched(plain: bool) -> dict[int, Any]:
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            method, args, kwargs = calls[i]
            got[i] = await (
                adapter.call_plain("plain", args[0], method, args, kwargs) if plain
                else adapter.call("checked", args[0], method, *args, **kwargs))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(len(calls)):
                    nursery.start_soon(one, i)
        return got

    got = await batched(plain=True)
    assert got == await batched(plain=False)
    assert got[2] == b"a" and got[3] == b"b" and got[4] is None


async def test_a_one_command_pipeline_is_batched_and_answers_as_redis_py_would(
        redis: RedisBackends) -> None:
    """A non-transactional pipeline of one short command (a run's presence check) goes out
    through the batcher, and gives what redis-py's own pipeline gives: replies for a key
    present, missing or of another kind, and the same error for a wrong-type read (its
    text that of a lone command, without redis-py's "Command # 1 of pipeline" prefix)."""
    adapter = redis.redis
    await adapter.call("setup", "k:hash", "hset", "k:hash", "field", "value")
    await adapter.call("setup", "k:string", "set", "k:string", "text")
    cases: list[tuple[str, tuple[Any, ...]]] = [
        ("exists", ("k:hash",)), ("exists", ("k:missing",)), ("exists", ("k:string",)),
        ("hget", ("k:hash", "field")), ("hget", ("k:missing", "field")),
        ("hget", ("k:string", "field")), ("get", ("k:string",)),
    ]

    async def answers() -> list[Any]:
        out: list[Any] = []
        for method, args in cases:
            try:
                out.append(await adapter.pipeline("one", args[0], [(method, args)],
                                                  transaction=False))
            except RedisDataError as exc:
                out.append((type(exc), repr(args[0]) in str(exc), "WRONGTYPE" in str(exc)))
        return out

    hops = count_round_trips(redis)
    batched = await answers()
    assert len(hops) == len(cases)  # each through the batcher
    batcher: Any = adapter._batcher
    adapter.stop_batching()
    try:
        general = await answers()
    finally:
        adapter.start_batching(batcher)
    assert len(hops) == len(cases)  # the general path: redis-py's pipeline, not a batch
    assert batched == general
    assert batched[:3] == [[1], [0], [1]]
    assert batched[5] == (RedisDataError, True, True)


async def test_a_callback_call_gets_its_reply_or_none_and_never_raises_into_the_batch(
        redis: RedisBackends, caplog: pytest.LogCaptureFixture) -> None:
    """``call_then``: the reply goes to the callback once, None when the command failed
    (an error reply, a batch that failed); a callback that raises is logged and the other
    calls of its batch still get their replies."""
    batcher = redis.redis._batcher
    assert batcher is not None
    await redis.payloads.put_result("res:ok", b"fine")
    await redis.redis.call("setup", "res:h", "hset", "res:h", "field", "value")
    got: dict[str, list[Any]] = {"ok": [], "wrongtype": [], "missing": [], "after": []}

    def broken(reply: Any) -> None:
        raise ZeroDivisionError("a callback bug")

    with trio.fail_after(DEADLINE):
        assert batcher.call_then("get", "res:ok", "get", ("res:ok",), got["ok"].append)
        assert batcher.call_then("get", "res:h", "get", ("res:h",), got["wrongtype"].append)
        assert batcher.call_then("get", "res:x", "get", ("res:x",), broken)
        assert batcher.call_then("get", "res:no", "get", ("res:no",), got["missing"].append)
        # an awaited call after them in the same tick: its reply comes after theirs
        assert await redis.payloads.get_result("res:ok") == b"fine"
    assert got["ok"] == [b"fine"] and got["wrongtype"] == [None] and got["missing"] == [None]
    assert "a reply's callback failed" in caplog.text

    # a batch that fails as a whole answers None to its callbacks
    adapter = redis.redis
    original = adapter.run_batch

    async def broken_once(what: str, batch: Any) -> Any:
        adapter.run_batch = original  # type: ignore[method-assign]
        raise ZeroDivisionError("a bug")

    adapter.run_batch = broken_once  # type: ignore[method-assign]
    with trio.fail_after(DEADLINE):
        assert batcher.call_then("get", "res:ok", "get", ("res:ok",), got["after"].append)
        while not got["after"]:
            await trio.sleep(0.01)
    assert got["after"] == [None]


async def test_callback_calls_queued_when_the_batcher_closes_are_answered_once(
        redis: RedisBackends) -> None:
    """Each callback call queued before the close is answered once (its reply if it went
    out first, else None); one made after the close is refused (False) and never
    answered."""
    batcher = redis.redis._batcher
    assert batcher is not None
    await redis.payloads.put_result("res:a", b"a")
    got: list[Any] = []
    with trio.fail_after(DEADLINE):
        assert batcher.call_then("get", "res:a", "get", ("res:a",), got.append)
        assert batcher.call_then("get", "res:a", "get", ("res:a",), got.append)
        await batcher.aclose()  # type: ignore[attr-defined]
        await trio.sleep(0.05)  # (a late reply, if any, would land here)
    assert len(got) == 2 and all(reply in (None, b"a") for reply in got)
    assert batcher.call_then("get", "res:a", "get", ("res:a",), got.append) is False
    await trio.sleep(0.05)
    assert len(got) == 2
