"""``MemoryPayloadStore``'s expiry against a plain model, on Trio's ``MockClock``.

The store keeps no expiry time per entry: its write times are kept apart, in write order,
and every read and write purges what has expired first. Random writes (values and bytes,
each half), rewrites, deletes, reads (every way the store reads) and waits, checked against
a dict of ``key -> (value, written at)``: a read finds exactly the live entries, and after
any read or write the store holds nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.errors import NotFoundError
from cordtrio.payloads import key_from_pointer

TTL = 10.0
_KEYS = [f"{prefix}j{i}" for prefix in ("ctx:", "res:") for i in range(3)]
_VALUES = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from("abc"), st.integers(-5, 5) | st.text(max_size=3),
                    max_size=2),
    st.lists(st.integers(0, 3), max_size=3),  # a result need not be an object
)
_OPS = st.lists(st.one_of(
    st.tuples(st.just("value"), st.sampled_from(_KEYS), _VALUES),
    st.tuples(st.just("bytes"), st.sampled_from(_KEYS), _VALUES),
    st.tuples(st.just("delete"), st.sampled_from(_KEYS), st.none()),
    st.tuples(st.just("read"), st.sampled_from(_KEYS), st.integers(0, 3)),
    st.tuples(st.just("wait"), st.none(), st.sampled_from([0.5, 1.0, 4.0, 9.5, 10.0, 11.0])),
), max_size=40)


def _stored(store: MemoryPayloadStore) -> set[str]:
    return {key_from_pointer(pointer) for half in store._halves for pointer in half}


def _read(store: MemoryPayloadStore, key: str, way: int) -> Any:
    """The value at ``key`` read one of the store's ways (``NotFoundError`` if missing)."""
    pointer = "redis://" + key
    if key.startswith("ctx:"):
        if way == 0:
            return store.get_context_payload_now(key).value()
        if way == 1:
            value = store.context_value_at_now(pointer)
            if value is not None:
                return value
        return store.context_payload_at_now(pointer).value()
    if way == 0:
        return store.get_result_payload_now(key).value()
    if way == 1:
        return store.result_output_at_now(pointer, 1000)[0]
    return store.result_payload_at_now(pointer).value()


def _examples() -> list[list[tuple[str, Any, Any]]]:
    """Every read way at the edge of expiry, and a rewrite's and a delete's place left
    behind: cases a random search may take long to find."""
    cases: list[list[tuple[str, Any, Any]]] = []
    for key in ("ctx:j0", "res:j0"):
        for way in range(3):
            for kind in ("value", "bytes"):
                cases.append([(kind, key, {"a": 1}), ("wait", None, 9.5), ("read", key, way),
                              ("wait", None, 0.5), ("read", key, way)])
        cases.append([("value", key, [1]), ("wait", None, 4.0), ("value", key, {"b": 2}),
                      ("wait", None, 9.5), ("read", key, 2), ("wait", None, 0.5),
                      ("read", key, 2)])
        cases.append([("value", key, [1]), ("delete", key, None), ("wait", None, 4.0),
                      ("bytes", key, [2]), ("wait", None, 9.5), ("read", key, 1),
                      ("wait", None, 0.5), ("read", key, 1)])
    return cases


def _with_examples(test: Any) -> Any:
    for case in _examples():
        test = example(case)(test)
    return test


@settings(max_examples=300, deadline=None)
@_with_examples
@given(_OPS)
def test_reads_find_exactly_the_live_entries(ops: list[tuple[str, Any, Any]]) -> None:
    async def main() -> None:
        store = MemoryPayloadStore(ttl_seconds=TTL)
        model: dict[str, tuple[Any, float]] = {}  # key -> (value, written at)
        for op, key, arg in ops:
            now = trio.current_time()
            if op == "wait":
                await trio.sleep(arg)
                continue
            if op == "delete":
                await store.delete(key)
                model.pop(key, None)
                continue
            if op == "value":
                if key.startswith("ctx:"):
                    store.put_context_value_now(key, arg)
                else:
                    store.put_result_value_now(key, arg)
                model[key] = (arg, now)
            elif op == "bytes":
                data = json.dumps(arg).encode()
                await (store.put_context if key.startswith("ctx:") else store.put_result)(
                    key, data)
                model[key] = (arg, now)
            else:
                live = key in model and now < model[key][1] + TTL
                try:
                    value = _read(store, key, arg)
                except NotFoundError:
                    assert not live, (key, model.get(key), now)
                else:
                    assert live and value == model[key][0], (key, value, model.get(key), now)
            alive = {k for k, (_, at) in model.items() if now < at + TTL}
            assert _stored(store) == alive  # purged by that read or write

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_clock_is_the_first_writers_not_a_readers_before_it() -> None:
    """Reads before anything is kept do not ask any clock: a store read under one
    ``trio.run`` and first written under another measures its entries' expiry on the
    writer's clock (the reader's, an hour ahead, would have expired them at once)."""
    store = MemoryPayloadStore(ttl_seconds=TTL)

    async def read_first() -> None:
        assert store.context_value_at_now("redis://ctx:j") is None

    async def write_then_wait() -> None:
        store.put_context_value_now("ctx:j", {"a": 1})
        await trio.sleep(TTL - 1)
        assert store.context_value_at_now("redis://ctx:j") == {"a": 1}
        await trio.sleep(1)
        assert store.context_value_at_now("redis://ctx:j") is None

    ahead = trio.testing.MockClock(autojump_threshold=0)
    ahead.jump(3600)
    trio.run(read_first, clock=ahead)
    trio.run(write_then_wait, clock=trio.testing.MockClock(autojump_threshold=0))
