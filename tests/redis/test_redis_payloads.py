"""The Redis payload store's payloads read back where they were written: a store that
reads results (an engine's) answers a result it wrote itself (its process's worker), and
one that reads job inputs (a worker's) a job input its process's run writes stored,
without a round trip, within the payload's TTL; that answer is what Redis holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis import payloads as payloads_module
from cordtrio.backends.redis.payloads import RedisPayloadStore
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.errors import CordtrioError, LeaseLostError, NotFoundError, StoreError
from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun
from cordtrio.ports import RunChanges

T0 = datetime(2026, 1, 1, tzinfo=UTC)


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
    monkeypatch.setattr(payloads_module, "RECENT_PAYLOADS_BYTES", 10)
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


def a_run(run_id: str) -> WorkflowRun:
    run = WorkflowRun(id=run_id, workflow_id="wf-1", status=RunStatus.RUNNING, input={},
                      created_at=T0, updated_at=T0)
    run.steps["s0"] = StepRun(step_id="s0", status=StepStatus.RUNNING, attempts=1)
    return run


async def input_written_for_a_reader(redis: RedisBackends, run_id: str, key: str,
                                     data: bytes) -> WorkflowRun:
    """A store reading job inputs (a worker in the engine's process), and ``data`` written
    at ``key`` by a run write of the store beside it: the run."""
    store, payloads = redis.store, redis.payloads
    assert store.commits_payloads_of(payloads)
    with pytest.raises(NotFoundError):
        await payloads.get_context("ctx:before")  # this store reads job inputs from now on
    run = a_run(run_id)
    await store.create_run(run)
    await store.save_run_changes(run, RunChanges(steps={"s0"}, payloads={key: data}))
    return run


async def test_a_job_input_a_run_write_stored_here_is_answered_as_redis_would(
        redis: RedisBackends) -> None:
    """A worker sharing the store with the engine (one process) reads the job input the
    engine's run write stored without a round trip; that answer is what Redis holds."""
    payloads = redis.payloads
    await input_written_for_a_reader(redis, "run-ctx", "ctx:job-1", b'{"n": 1}')
    counter = CommandCounter(redis.redis)
    assert await payloads.get_context("ctx:job-1") == b'{"n": 1}'
    assert counter.counts["get"] == 0
    assert await read_context_from_redis(redis, "ctx:job-1") == b'{"n": 1}'
    assert await payloads.get_context("ctx:job-1") == b'{"n": 1}'  # a second read: Redis's
    assert counter.counts["get"] == 2
    counter.close()


async def test_a_job_input_of_a_write_that_failed_is_not_kept(redis: RedisBackends) -> None:
    store, payloads = redis.store, redis.payloads
    run = await input_written_for_a_reader(redis, "run-lost", "ctx:j", b"old")
    with pytest.raises(LeaseLostError):  # fenced by a lease nobody holds: nothing written
        await store.save_run_changes(run, RunChanges(steps={"s0"}, lease_owner="other",
                                                     payloads={"ctx:j": b"new"}))
    assert await payloads.get_context("ctx:j") == b"old" == await read_context_from_redis(
        redis, "ctx:j")


async def test_job_inputs_are_kept_only_once_this_store_reads_them(
        redis: RedisBackends) -> None:
    """An engine's own process (its workers elsewhere) keeps none of the inputs it writes."""
    store, payloads = redis.store, redis.payloads
    assert store.commits_payloads_of(payloads)
    run = a_run("run-alone")
    await store.create_run(run)
    await store.save_run_changes(run, RunChanges(steps={"s0"}, payloads={"ctx:e": b"e"}))
    await payloads.put_context("ctx:p", b"p")
    counter = CommandCounter(redis.redis)
    assert await payloads.get_context("ctx:e") == b"e"
    assert await payloads.get_context("ctx:p") == b"p"
    assert counter.counts["get"] == 2
    counter.reset()
    await payloads.put_context("ctx:p", b"p2")  # reading job inputs now: kept
    await payloads.delete("ctx:e")
    assert await payloads.get_context("ctx:p") == b"p2"
    assert counter.counts["get"] == 0
    with pytest.raises(NotFoundError, match="ctx:e"):
        await payloads.get_context("ctx:e")
    counter.close()


async def read_context_from_redis(redis: RedisBackends, key: str) -> bytes:
    """``key`` read by a store that kept nothing: the general path, a GET."""
    return await RedisPayloadStore(redis.redis).get_context(key)


async def test_a_job_input_of_a_write_whose_reply_was_lost_is_read_from_redis(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write ran, but its caller got an error: the input kept from the write before is
    not answered any more (Redis holds the new one)."""
    store, payloads, adapter = redis.store, redis.payloads, redis.redis
    run = await input_written_for_a_reader(redis, "run-unknown", "ctx:u", b"old")
    script = adapter.script

    async def ran_then_failed(*args: Any, **kwargs: Any) -> Any:
        await script(*args, **kwargs)
        raise StoreError("redis: save run changes: connection lost")

    monkeypatch.setattr(adapter, "script", ran_then_failed)
    with pytest.raises(StoreError):
        await store.save_run_changes(run, RunChanges(steps={"s0"}, payloads={"ctx:u": b"new"}))
    monkeypatch.undo()
    assert await payloads.get_context("ctx:u") == b"new" == await read_context_from_redis(
        redis, "ctx:u")


class FakeClock:
    """Stands in for ``payloads.clock`` (Redis's real time): moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_kept_payloads_are_not_answered_once_redis_may_have_expired_them(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept result or job input is answered from here only within its TTL, counted from
    before its write went: past it, the read goes to Redis (which expires the key itself)."""
    clock = FakeClock()
    monkeypatch.setattr(payloads_module, "clock", clock)
    store, payloads = redis.store, redis.payloads
    ttl = payloads.ttl_seconds
    assert ttl is not None and store.commits_payloads_of(payloads)
    for read in (payloads.get_result, payloads.get_context):  # both kinds read here now
        with pytest.raises(NotFoundError):
            await read("res:before" if read == payloads.get_result else "ctx:before")
    run = a_run("run-ttl")
    await store.create_run(run)
    await payloads.put_result("res:soon", b"1")
    await payloads.put_result("res:late", b"2")
    await store.save_run_changes(run, RunChanges(steps={"s0"}, payloads={"ctx:late": b"3"}))
    counter = CommandCounter(redis.redis)
    clock.now += ttl - 1
    assert await payloads.get_result("res:soon") == b"1"  # within its TTL: kept
    assert counter.counts["get"] == 0
    clock.now += 1  # the TTL has run out: Redis decides (here it still holds them)
    assert await payloads.get_result("res:late") == b"2"
    assert await payloads.get_context("ctx:late") == b"3"
    assert counter.counts["get"] == 2
    counter.close()


async def _read_then(store: RedisPayloadStore, key: str) -> tuple[bool, list[Any]]:
    """``get_result_then(key)``: whether it started, and what its callback got."""
    import trio

    got: list[Any] = []
    answered = trio.Event()

    def done(data: bytes | None) -> None:
        got.append(data)
        answered.set()

    started = store.get_result_then(key, done)
    if started:
        with trio.fail_after(10):
            await answered.wait()
    return started, got


async def test_a_result_read_then_hands_getresults_answer_to_its_callback(
        redis: RedisBackends) -> None:
    """What an engine reads before the run task wakes: the payload, or None where
    ``get_result`` raises (the task reads again for the error); a kept one at once."""
    store = redis.payloads
    await RedisPayloadStore(redis.redis).put_result("res:t", b'{"a": 1}')  # not kept here
    assert await _read_then(store, "res:t") == (True, [b'{"a": 1}'])
    assert await store.get_result("res:t") == b'{"a": 1}'
    assert await _read_then(store, "res:missing") == (True, [None])
    await redis.redis.call("push", "res:list", "rpush", "res:list", "x")
    assert await _read_then(store, "res:list") == (True, [None])  # WRONGTYPE
    with pytest.raises(CordtrioError):
        await store.get_result("res:list")
    await store.put_result("res:kept", b"k")  # this store reads results: kept
    counter = CommandCounter(redis.redis)
    assert await _read_then(store, "res:kept") == (True, [b"k"])
    assert counter.counts["get"] == 0 and counter.counts["mget"] == 0
    counter.close()
    with pytest.raises(ValueError):
        store.get_result_then("secret:token", lambda data: None)


async def test_concurrent_reads_then_go_as_one_mget(redis: RedisBackends) -> None:
    import trio

    store = redis.payloads
    for i in range(5):
        await RedisPayloadStore(redis.redis).put_result(f"res:m{i}", str(i).encode())
    counter = CommandCounter(redis.redis)
    got: dict[int, Any] = {}
    for i in range(5):
        assert store.get_result_then(f"res:m{i}", lambda data, i=i: got.__setitem__(i, data))
    with trio.fail_after(10):
        while len(got) < 5:
            await trio.sleep(0.001)
    assert got == {i: str(i).encode() for i in range(5)}
    assert counter.counts["mget"] == 1 and counter.counts["get"] == 0
    counter.close()


async def test_no_result_is_read_then_once_the_connection_closed() -> None:
    import fakeredis

    from cordtrio.backends.redis import connect

    async with connect("fakeredis", client=fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer())) as backends:
        store = backends.payloads
    assert await _read_then(store, "res:late") == (False, [])


def test_a_subclass_that_overrides_get_result_gets_every_result_read() -> None:
    """A store subclass that changes ``get_result`` (to count or fail reads) is not
    bypassed by the engine's early reads (``get_result_then``): they are turned off for it,
    unless it changes ``get_result_then`` too."""

    class Counting(RedisPayloadStore):
        async def get_result(self, key: str) -> bytes:
            return await super().get_result(key)

    class Both(RedisPayloadStore):
        async def get_result(self, key: str) -> bytes:
            return await super().get_result(key)

        def get_result_then(self, key: str, done: Any) -> bool:
            return super().get_result_then(key, done)

    assert RedisPayloadStore.reads_results_then is True
    assert Counting.reads_results_then is False
    assert Both.reads_results_then is True


async def _write_then(store: RedisPayloadStore, key: str, data: bytes
                      ) -> tuple[bool, list[Any]]:
    """``put_result_then(key, data)``: whether it started, and what its callback got."""
    import trio

    got: list[Any] = []
    answered = trio.Event()

    def done(reply: Any) -> None:
        got.append(reply)
        answered.set()

    started = store.put_result_then(key, data, done)
    if started:
        with trio.fail_after(10):
            await answered.wait()
    return started, got


async def test_a_result_write_then_hands_sets_reply_to_its_callback(
        redis: RedisBackends) -> None:
    """What a worker's slot does not wait for: a true reply once the result is stored,
    with its TTL, as ``put_result`` stores it; concurrent writes merged in one script call.
    Not offered by a store that reads results (it keeps what it writes)."""
    import trio

    store = RedisPayloadStore(redis.redis)  # a worker's own: it reads no results
    started, got = await _write_then(store, "res:w", b'{"a": 1}')
    assert started and got and got[0]
    assert await read_from_redis(redis, "res:w") == b'{"a": 1}'
    ttl = await redis.redis.run("ttl", lambda c: c.ttl("res:w"))
    assert 0 < ttl <= store.ttl_seconds  # type: ignore[operator]
    counter = CommandCounter(redis.redis)
    replies: dict[int, Any] = {}
    for i in range(3):
        assert store.put_result_then(f"res:w{i}", b"%d" % i,
                                     lambda reply, i=i: replies.__setitem__(i, reply))
    with trio.fail_after(10):
        while len(replies) < 3:
            await trio.sleep(0.001)
    assert all(replies.values())
    assert counter.counts["set"] == 0 and counter.counts["evalsha"] == 1
    counter.close()
    for i in range(3):
        assert await read_from_redis(redis, f"res:w{i}") == b"%d" % i
    forever = RedisPayloadStore(redis.redis, ttl_seconds=None)
    assert (await _write_then(forever, "res:f", b"f"))[0]
    assert await redis.redis.run("ttl", lambda c: c.ttl("res:f")) == -1  # no expiry
    with pytest.raises(ValueError):
        store.put_result_then("secret:token", b"x", lambda reply: None)
    reader = redis.payloads
    with pytest.raises(NotFoundError):
        await reader.get_result("res:none")  # reads results from now on: keeps its writes
    assert await _write_then(reader, "res:r", b"r") == (False, [])


async def test_no_result_is_written_then_once_the_connection_closed() -> None:
    import fakeredis

    from cordtrio.backends.redis import connect

    async with connect("fakeredis", client=fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer())) as backends:
        store = RedisPayloadStore(backends.redis)
    assert await _write_then(store, "res:late", b"x") == (False, [])


def test_a_subclass_that_overrides_put_result_gets_every_result_write() -> None:
    class Counting(RedisPayloadStore):
        async def put_result(self, key: str, data: bytes) -> None:
            await super().put_result(key, data)

    assert RedisPayloadStore.writes_results_then is True
    assert Counting.writes_results_then is False


@pytest.mark.parametrize("ptr", [
    "redis://ctx:j1", "ctx:j1", "redis://ctx:missing", "redis://res:j1", "res:j1",
    "redis://ctx:", "redis://ctx:j1 ", " redis://ctx:j1", "redis://ctx:a\nb", "redis://",
    "", "secret:token", "redis://secret:token", "redis://ctx:j1\x00",
])
async def test_a_job_input_read_by_its_pointer_is_the_keys_read(
        redis: RedisBackends, ptr: str) -> None:
    """``get_context_at(ptr)`` (a worker's read, the key checked once) answers and fails
    as ``get_context(key_from_pointer(ptr))`` does."""
    from cordtrio.payloads import key_from_pointer

    store = RedisPayloadStore(redis.redis)
    await store.put_context("ctx:j1", b'{"in": 1}')
    await store.put_result("res:j1", b'{"out": 1}')

    async def general() -> bytes:
        return await store.get_context(key_from_pointer(ptr))

    outcomes = []
    for read in (lambda: store.get_context_at(ptr), general):
        try:
            outcomes.append(("value", await read()))
        except Exception as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]


def test_a_subclass_that_overrides_get_context_gets_every_input_read() -> None:
    class Counting(RedisPayloadStore):
        async def get_context(self, key: str) -> bytes:
            return await super().get_context(key)

    assert RedisPayloadStore.reads_contexts_at is True
    assert Counting.reads_contexts_at is False
