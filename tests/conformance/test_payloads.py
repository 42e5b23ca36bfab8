"""The payload store port (API.md "Payload store"), run against every storage backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.errors import NotFoundError, PayloadPointerError
from cordtrio.payloads import context_key, key_from_pointer, result_key
from cordtrio.ports import PayloadStore

DAY = 24 * 3600


async def test_backend_implements_the_payload_store_protocol(payloads: PayloadStore) -> None:
    assert isinstance(payloads, PayloadStore)


async def test_context_and_result_round_trip_bytes(payloads: PayloadStore) -> None:
    await payloads.put_context(context_key("job-1"), b'{"width": 3}')
    await payloads.put_result(result_key("job-1"), '{"ok": "é"}'.encode())
    assert await payloads.get_context("ctx:job-1") == b'{"width": 3}'
    assert await payloads.get_result("res:job-1") == '{"ok": "é"}'.encode()


async def test_a_second_put_overwrites(payloads: PayloadStore) -> None:
    await payloads.put_result("res:j", b"1")
    await payloads.put_result("res:j", b"2")
    assert await payloads.get_result("res:j") == b"2"


async def test_missing_payloads_raise_not_found_naming_the_key(payloads: PayloadStore) -> None:
    with pytest.raises(NotFoundError, match="ctx:nope"):
        await payloads.get_context("ctx:nope")
    with pytest.raises(NotFoundError, match="res:nope"):
        await payloads.get_result("res:nope")


async def test_stored_bytes_do_not_alias_the_callers_buffer(payloads: PayloadStore) -> None:
    buf = bytearray(b"abc")
    await payloads.put_context("ctx:j", buf)  # type: ignore[arg-type]
    buf[0] = ord("x")
    assert await payloads.get_context("ctx:j") == b"abc"


async def test_payloads_expire_after_the_ttl(
    storage: Any, payloads: PayloadStore, autojump_clock: trio.testing.MockClock
) -> None:
    if "trio_clock_ttl" not in storage.capabilities:
        pytest.skip("backend TTLs do not follow Trio's clock")
    await payloads.put_context("ctx:j", b"x")
    await trio.sleep(DAY - 1)
    assert await payloads.get_context("ctx:j") == b"x"
    await trio.sleep(2)
    with pytest.raises(NotFoundError, match="ctx:j"):
        await payloads.get_context("ctx:j")


async def test_rewriting_a_payload_restarts_its_ttl(
    storage: Any, payloads: PayloadStore, autojump_clock: trio.testing.MockClock
) -> None:
    if "trio_clock_ttl" not in storage.capabilities:
        pytest.skip("backend TTLs do not follow Trio's clock")
    await payloads.put_result("res:j", b"1")
    await trio.sleep(DAY - 10)
    await payloads.put_result("res:j", b"2")
    await trio.sleep(20)
    assert await payloads.get_result("res:j") == b"2"
    await trio.sleep(DAY)
    with pytest.raises(NotFoundError):
        await payloads.get_result("res:j")


# ------------------------------------------------------------------ the payload namespace

FOREIGN_KEYS = ["secret:token", "other:key", "wf:run:r1", "ctx:", "res:", "", "CTX:j",
                "xctx:j", " ctx:j", "ctx:j\n"]


async def _plant(storage: Any, key: str, value: bytes) -> bool:
    """Write ``key`` behind the payload store's back (Redis backends); False if it cannot."""
    if "redis" not in storage.capabilities or not key:
        return False
    await storage.payloads._redis.call("test", key, "set", key, value)
    return True


@pytest.mark.parametrize("key", FOREIGN_KEYS)
async def test_keys_outside_the_payload_namespace_are_refused_unread(
    storage: Any, payloads: PayloadStore, key: str
) -> None:
    """A key other payload-store code did not write is never read (nor written): the error
    names it, even when a value sits there."""
    planted = await _plant(storage, key, b'"the secret"')
    for call in (payloads.get_result, payloads.get_context):
        with pytest.raises(PayloadPointerError, match="refused") as info:
            await call(key)
        assert repr(key) in str(info.value)
    for put in (payloads.put_result, payloads.put_context):
        with pytest.raises(PayloadPointerError):
            await put(key, b"x")
    if planted:  # still there, untouched
        assert await storage.payloads._redis.call("test", key, "get", key) == b'"the secret"'


async def test_each_half_of_the_namespace_reads_only_its_own_keys(
    payloads: PayloadStore,
) -> None:
    """Inputs are read as ``ctx:`` keys and results as ``res:`` keys, never the other way."""
    await payloads.put_context("ctx:j", b"{}")
    await payloads.put_result("res:j", b"{}")
    with pytest.raises(PayloadPointerError, match="ctx:j"):
        await payloads.get_result("ctx:j")
    with pytest.raises(PayloadPointerError, match="res:j"):
        await payloads.get_context("res:j")


def test_pointers_resolve_only_into_the_payload_namespace() -> None:
    assert key_from_pointer("redis://res:run:a@1") == "res:run:a@1"
    assert key_from_pointer("res:run:a@1") == "res:run:a@1"  # the bare form
    assert key_from_pointer("redis://ctx:run:a@1", "ctx:") == "ctx:run:a@1"
    for bad in ("redis://secret:token", "redis://other:key", "secret:token", "redis://",
                "redis://wf:run:x", "http://res:x", "redis:// res:x"):
        with pytest.raises(PayloadPointerError) as info:
            key_from_pointer(bad)
        assert repr(bad) in str(info.value)
        assert isinstance(info.value, ValueError)  # the documented ValueError still holds
    with pytest.raises(PayloadPointerError, match="redis://ctx:j"):
        key_from_pointer("redis://ctx:j", "res:")


# ------------------------------------------------------------------ memory backend only


async def test_memory_ttl_is_configurable_and_can_be_disabled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    short = MemoryPayloadStore(ttl_seconds=5)
    forever = MemoryPayloadStore(ttl_seconds=None)
    for store in (short, forever):
        await store.put_context("ctx:j", b"x")
    await trio.sleep(10 * DAY)
    with pytest.raises(NotFoundError):
        await short.get_context("ctx:j")
    assert await forever.get_context("ctx:j") == b"x"


def _stored_keys(store: MemoryPayloadStore) -> set[str]:
    """The keys a memory store holds entries for, expired or not (its private halves, kept
    by pointer)."""
    return {key_from_pointer(pointer) for half in store._halves for pointer in half}


async def test_memory_expired_entries_are_purged_by_later_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryPayloadStore(ttl_seconds=60)
    for i in range(100):
        await store.put_result(f"res:{i}", b"x")
    await trio.sleep(61)
    await store.put_result("res:new", b"y")
    assert _stored_keys(store) == {"res:new"}


async def test_memory_expired_entries_are_purged_by_reads_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every read, by key or at a pointer, purges what has expired before it looks: an
    entry present is live, and an expired one reads as missing."""
    store = MemoryPayloadStore(ttl_seconds=60)
    reads: list[Callable[[], Any]] = [
        lambda: store.get_context_payload_now("ctx:j"),
        lambda: store.context_payload_at_now("redis://ctx:j"),
        lambda: store.get_result_payload_now("res:j"),
        lambda: store.result_payload_at_now("redis://res:j"),
        lambda: store.result_output_at_now("redis://res:j", 1000),
    ]
    for read in reads:
        store.put_context_value_now("ctx:j", {"a": 1})
        store.put_result_value_now("res:j", {"b": 2})
        await trio.sleep(59)
        read()  # still live
        assert store.context_value_at_now("redis://ctx:j") == {"a": 1}
        await trio.sleep(1)  # now expired
        with pytest.raises(NotFoundError):
            read()
        assert _stored_keys(store) == set()
    store.put_context_value_now("ctx:j", {"a": 1})
    await trio.sleep(60)
    assert store.context_value_at_now("redis://ctx:j") is None
    assert _stored_keys(store) == set()
    with pytest.raises(NotFoundError):
        await store.get_context("ctx:j")


async def test_memory_purge_passes_the_places_a_rewrite_or_delete_left_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A key written again (or deleted) does not hold up the purge of the entries written
    after its first write, and is itself purged only once its last write expires."""
    store = MemoryPayloadStore(ttl_seconds=60)
    await store.put_result("res:again", b"1")
    await store.put_result("res:gone", b"1")
    await store.put_result("res:early", b"1")
    await trio.sleep(30)
    await store.put_result("res:again", b"2")  # expires at 90
    await store.delete("res:gone")
    await store.put_result("res:gone", b"2")  # written again after a delete: expires at 90
    await store.put_result("res:late", b"1")  # expires at 90
    await trio.sleep(31)
    await store.put_result("res:new", b"1")  # at 61: "early" expired, nothing else
    assert _stored_keys(store) == {"res:again", "res:gone", "res:late", "res:new"}
    assert await store.get_result("res:again") == b"2"
    await trio.sleep(30)
    await store.put_result("res:last", b"1")  # at 91
    assert _stored_keys(store) == {"res:new", "res:last"}
    with pytest.raises(NotFoundError):
        await store.get_result("res:again")
    await store.delete("res:new")
    await trio.sleep(60)
    await store.put_result("res:after", b"1")
    assert _stored_keys(store) == {"res:after"}
    assert not store._left_behind


async def test_memory_delete_removes_a_payload() -> None:
    store = MemoryPayloadStore()
    await store.put_result("res:j", b"x")
    await store.delete("res:j")
    await store.delete("res:j")  # deleting again is fine
    with pytest.raises(NotFoundError):
        await store.get_result("res:j")


async def test_memory_put_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="ctx:j"):
        await MemoryPayloadStore().put_context("ctx:j", "text")  # type: ignore[arg-type]


async def test_memory_expiry_under_trios_own_clock_is_measured_by_perf_counter() -> None:
    """Under Trio's ``SystemClock`` (``offset + perf_counter()``, the offset fixed) the store
    reads ``perf_counter`` itself: an entry expires a TTL after its write on that scale, and
    an entry past it is gone (checked by the readings, without waiting in real time)."""
    clock = trio.lowlevel.current_clock()
    offsets = {round(clock.current_time() - time.perf_counter(), 3) for _ in range(100)}
    assert len(offsets) <= 2  # a fixed offset (rounding aside)
    store = MemoryPayloadStore(ttl_seconds=30)
    before = time.perf_counter()
    await store.put_result("res:j", b"x")
    after = time.perf_counter()
    assert store._clock_now is time.perf_counter
    (_, written) = store._order  # the one entry's place in the purge order, and its time
    expires = written + 30
    assert before + 30 <= expires <= after + 30
    assert await store.get_result("res:j") == b"x"
    store._order[1] = before - 31  # written long ago: now past its expiry
    store._purge_at = before - 1
    with pytest.raises(NotFoundError):
        await store.get_result("res:j")
    assert _stored_keys(store) == set()  # purged by the read


def test_memory_without_ttl_reads_at_a_pointer_outside_trio() -> None:
    """A store without a TTL never reads the clock: its reads at a pointer work in plain
    synchronous code (a tool, a test) as its writes do."""
    store = MemoryPayloadStore(ttl_seconds=None)
    store.put_context_value_now("ctx:j", {"a": 1})
    assert store.context_payload_at_now("redis://ctx:j").value() == {"a": 1}
    assert store.get_context_payload_now("ctx:j").value() == {"a": 1}


def test_memory_with_a_ttl_and_nothing_stored_reads_outside_trio() -> None:
    """A store with a TTL that keeps nothing does not ask the clock on a read either: a
    missing payload is reported as missing (not a "must be called from Trio" error), and
    the store is not bound to any ``trio.run``'s clock by it."""
    store = MemoryPayloadStore(ttl_seconds=30)
    with pytest.raises(NotFoundError):
        store.get_result_payload_now("res:j")
    assert store.context_value_at_now("redis://ctx:j") is None
    with pytest.raises(NotFoundError):
        store.result_payload_at_now("redis://res:j")
    with pytest.raises(NotFoundError):
        store.result_output_at_now("redis://res:j", 100)


async def test_memory_without_ttl_reads_at_a_pointer_forever(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reads at a pointer compare an entry's expiry with the clock without asking for
    the TTL: a store without one keeps its entries expiring never."""
    store = MemoryPayloadStore(ttl_seconds=None)
    store.put_context_value_now("ctx:j", {"a": 1})
    await store.put_result("res:j", b'{"b": 2}')
    await trio.sleep(10 * DAY)
    assert store.context_payload_at_now("redis://ctx:j").value() == {"a": 1}
    assert store.result_payload_at_now("redis://res:j").value() == {"b": 2}
    assert store.result_output_at_now("redis://res:j", 100) == ({"b": 2}, False)
    assert _stored_keys(store) == {"ctx:j", "res:j"} and not store._order
