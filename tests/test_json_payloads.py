"""Payloads handed over as values in-process (``cordtrio.json_payloads``): the same values,
texts and errors as the JSON bytes path, and no sharing with the caller."""

from __future__ import annotations

import json
import marshal
import math
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from cordtrio import json_payloads
from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.errors import NotFoundError, PayloadPointerError
from cordtrio.json_payloads import JsonPayload
from cordtrio.payloads import check_payload_key, key_from_pointer

COMPACT = json.JSONEncoder(separators=(",", ":"))

PLAIN: list[Any] = [
    {}, [], "", 0, -1, 2**200, 1.5, -0.0, 1e300, math.inf, True, None,
    {"ok": True}, {"a": [1, 2.5, "x", None, {"b": False}], "é": "\u2603\ud800"},
    [[[]]], {"k" * 50: "v" * 500}, json.loads("[" * 40 + "1" + "]" * 40),
]
ODD: list[Any] = [
    (1, 2), {1: "int key"}, {"t": (1, [2])}, {True: 1}, {None: 2}, [{"deep": (3,)}],
    {"big": 2**4100}, json.loads("[" * 100 + "]" * 100),
]


def _round_trip(value: Any, compact: bool) -> Any:
    return json.loads((COMPACT if compact else json.JSONEncoder()).encode(value))


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("value", PLAIN + ODD)
def test_a_payload_reads_back_what_a_json_round_trip_gives(value: Any, compact: bool) -> None:
    payload = JsonPayload.of(value, compact=compact)
    expected = _round_trip(value, compact)
    assert payload.value() == expected or (payload.value() != payload.value())  # nan
    assert repr(payload.value()) == repr(expected)
    text = (COMPACT.encode(value) if compact else json.dumps(value)).encode()
    assert payload.text() == text
    assert payload.value_or_text() == expected


TEXTS: list[bytes] = [
    b"{}", b'{"a":1}', b'{"a": [1, 2.5, "x", null]} ', '{"\u00e9": "\u2603"}'.encode(),
    b'{"s": "\\ud800"}', '{"raw": "\ud800"}'.encode("utf-8", "surrogatepass"),
    b"{", b"{,}", b'{"a":1} x', b"{\xff}", b"{\x00\x00\x00", b"[1]", b" {}", b"1",
    '\ufeff{"bom": 1}'.encode(), '{"le": 1}'.encode("utf-16-le"),
    '{"be": 1}'.encode("utf-16-be"), '{"u32": 1}'.encode("utf-32-le"),
]


def _loads_or_error(read: Any) -> Any:
    try:
        return ("value", read())
    except ValueError as exc:
        return ("error", type(exc), str(exc))


@pytest.mark.parametrize("text", TEXTS)
def test_a_text_reads_back_as_json_loads_reads_it(text: bytes) -> None:
    # ``value`` decodes a UTF-8 object itself, every other text with ``json.loads``
    assert _loads_or_error(JsonPayload.of_text(text).value) == \
        _loads_or_error(lambda: json.loads(text))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_any_object_text_reads_back_as_json_loads_reads_it(value: Any) -> None:
    for text in (json.dumps({"v": value}).encode(),
                 json.dumps({"v": value}, ensure_ascii=False).encode("utf-8", "surrogatepass")):
        assert _loads_or_error(JsonPayload.of_text(text).value) == \
            _loads_or_error(lambda text=text: json.loads(text))


def test_nan_reads_back_as_nan() -> None:
    assert math.isnan(JsonPayload.of(math.nan, compact=True).value())
    assert JsonPayload.of([math.nan], compact=True).text() == b"[NaN]"


class Unknown:
    pass


@pytest.mark.parametrize("value", [
    Unknown(), {"a": Unknown()}, {"s": {1, 2}}, {(1, 2): "tuple key"}, b"bytes",
    {"huge": 10**5000}], ids=["object", "nested", "set", "tuple-key", "bytes", "huge-int"])
def test_what_json_refuses_is_refused_with_its_error(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as expected:
        json.dumps(value)
    with pytest.raises(type(expected.value)) as got:
        JsonPayload.of(value, compact=False)
    assert str(got.value) == str(expected.value)


def test_a_cycle_is_refused_as_json_refuses_it() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(ValueError, match="Circular reference"):
        JsonPayload.of(cycle, compact=True)


def test_nothing_is_shared_with_the_caller() -> None:
    value = {"a": [1, {"b": 2}]}
    payload = JsonPayload.of(value, compact=True)
    value["a"][1]["b"] = 99  # type: ignore[index]
    got = payload.value()
    assert got == {"a": [1, {"b": 2}]}
    got["a"].append(3)
    assert payload.value() == {"a": [1, {"b": 2}]}
    assert payload.value() is not payload.value()


@pytest.mark.parametrize("compact", [True, False])
def test_the_empty_object_reads_as_the_general_path_gives_it(compact: bool) -> None:
    shared = JsonPayload.of({}, compact=compact)  # made once, handed to every caller
    general = JsonPayload(None, marshal.dumps({}, 2), 2, compact)
    assert shared.parts[1:] == general.parts[1:]
    assert shared.text() == general.text() == b"{}"
    got = shared.value()
    got["changed"] = True
    assert shared.value() == general.value() == {}
    assert shared.value() is not shared.value()
    kept = JsonPayload.of_parts(shared.parts)  # as a store hands it back
    assert type(kept.value()) is dict and kept.value() == general.value()
    assert kept.value_or_text() == general.value_or_text() == {}
    assert shared.too_large(1) and not shared.too_large(2)

    class Mapping(dict[str, Any]):
        pass

    assert JsonPayload.of(Mapping(), compact=compact).text() == b"{}"  # the JSON path


def test_too_large_measures_the_text() -> None:
    small = JsonPayload.of({"s": "x" * 100}, compact=False)
    assert not small.too_large(1000)
    assert small.too_large(len(b'{"s": "' + b"x" * 100 + b'"}') - 1)
    escaped = JsonPayload.of("\u2603" * 100, compact=True)  # six bytes per character
    assert escaped.too_large(599) and not escaped.too_large(602)
    assert JsonPayload.of_text(b"not json").value_or_text() == "not json"
    with pytest.raises(ValueError):
        JsonPayload.of_text(b"not json").value()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)
WORST_TEXT_PER_BYTE: list[Any] = [  # the most text per byte kept: falses, escaped characters
    [False] * 300, [[False]] * 100, {"": False}, "\x01" * 100, "\U0001f600" * 50,
    {"\x01" * 10: [None, True, -1, 1e-300]}, [2**4000 - 1],
    "\U0001f600" * 300, {"\U0001f600" * 200: ["\U0001f600" * 200]},  # 12 characters each
]


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("value", PLAIN + ODD + WORST_TEXT_PER_BYTE)
def test_too_large_tells_one_byte_over(value: Any, compact: bool) -> None:
    size = len(JsonPayload.of(value, compact=compact).text())
    assert JsonPayload.of(value, compact=compact).too_large(size - 1)
    assert not JsonPayload.of(value, compact=compact).too_large(size)


@given(json_values, st.booleans())
def test_any_json_value_reads_back_and_measures_as_its_text(value: Any, compact: bool) -> None:
    text = (COMPACT if compact else json.JSONEncoder()).encode(value).encode()
    assert JsonPayload.of(value, compact=compact).text() == text
    assert repr(JsonPayload.of(value, compact=compact).value()) == repr(json.loads(text))
    assert JsonPayload.of(value, compact=compact).too_large(len(text) - 1)
    assert not JsonPayload.of(value, compact=compact).too_large(len(text))


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("value", PLAIN + ODD + WORST_TEXT_PER_BYTE)
def test_a_snapshot_kept_alone_stands_for_a_text_within_the_bound(value: Any,
                                                                   compact: bool) -> None:
    """The memory store reads a result kept as bytes alone without measuring it when the
    limit is at least ``KEPT_TEXT_BOUND``."""
    kept = json_payloads.kept_of(value, compact)
    if type(kept) is bytes:
        assert len(JsonPayload.of(value, compact=compact).text()) < \
            json_payloads.KEPT_TEXT_BOUND


async def test_the_memory_store_reads_either_form_either_way() -> None:
    store = MemoryPayloadStore()
    assert store.takes_json_payloads
    await json_payloads.put_context(store, "ctx:j", json_payloads.encode(
        store, {"a": (1, 2)}, compact=True))
    assert await store.get_context("ctx:j") == b'{"a":[1,2]}'
    assert (await json_payloads.get_context(store, "ctx:j")).value() == {"a": [1, 2]}
    await store.put_result("res:j", b'{"x": 1}')
    assert (await json_payloads.get_result(store, "res:j")).value() == {"x": 1}
    await json_payloads.put_result(store, "res:k", JsonPayload.of({"y": 2}, compact=False))
    assert await store.get_result("res:k") == b'{"y": 2}'
    with pytest.raises(PayloadPointerError):
        await store.put_result_payload("ctx:j", JsonPayload.of(1, compact=False))
    with pytest.raises(NotFoundError, match="res:none"):
        await store.get_result_payload("res:none")


async def test_payload_entries_expire_like_bytes(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryPayloadStore(ttl_seconds=10)
    await store.put_context_payload("ctx:j", JsonPayload.of({}, compact=True))
    await trio.sleep(9)
    assert (await store.get_context_payload("ctx:j")).value() == {}
    await trio.sleep(2)
    with pytest.raises(NotFoundError):
        await store.get_context_payload("ctx:j")


async def test_a_store_that_changes_the_bytes_path_gets_bytes() -> None:
    class Counting(MemoryPayloadStore):
        puts = 0

        async def put_result(self, key: str, data: bytes) -> None:
            self.puts += 1
            await super().put_result(key, data)

    store = Counting()
    assert not store.takes_json_payloads
    data = json_payloads.encode(store, {"z": 1}, compact=False)
    assert data == b'{"z": 1}'
    await json_payloads.put_result(store, "res:j", data)
    await json_payloads.put_result(store, "res:k", JsonPayload.of([1], compact=False))
    assert store.puts == 2 and await store.get_result("res:k") == b"[1]"


async def test_a_store_that_changes_a_payload_call_is_awaited_for_every_payload() -> None:
    """The calls made without awaiting (``calls_now``) are the store's own: a subclass that
    overrides any payload method (to count or fail calls) is awaited, so it sees them all."""
    class Counting(MemoryPayloadStore):
        gets = 0

        async def get_result_payload(self, key: str) -> JsonPayload:
            self.gets += 1
            return await super().get_result_payload(key)

    assert MemoryPayloadStore.calls_now and not Counting.calls_now
    store = Counting()
    path = json_payloads.path_for(store)
    assert path.result_at_now is None and path.put_context_now is None
    await path.put_result("res:j", path.encode({"z": 1}, False))
    assert (await path.get_result("res:j")).value() == {"z": 1} and store.gets == 1


@pytest.mark.parametrize("value", [{}, {"ok": True}, [1, "x", None]])
async def test_the_calls_made_without_awaiting_answer_as_the_awaited_ones(value: Any) -> None:
    store = MemoryPayloadStore()
    path = json_payloads.path_for(store)
    assert path.put_context_now is not None and path.context_at_now is not None
    assert path.put_result_now is not None and path.result_at_now is not None
    path.put_context_now("ctx:n", path.encode(value, True))
    await path.put_context("ctx:a", path.encode(value, True))
    assert await store.get_context("ctx:n") == await store.get_context("ctx:a")
    assert repr(path.context_at_now("redis://ctx:n").value()) == repr(
        (await path.get_context("ctx:a")).value())
    path.put_result_now("res:n", path.encode(value, False))
    await path.put_result("res:a", path.encode(value, False))
    assert await store.get_result("res:n") == await store.get_result("res:a")
    assert repr(path.result_at_now("redis://res:n").value()) == repr(
        (await path.get_result("res:a")).value())
    assert path.result_at_now("res:n").value() == value  # a bare key is a pointer too
    with pytest.raises(PayloadPointerError):
        path.put_context_now("res:n", path.encode(value, True))


@pytest.mark.parametrize("pointer", [
    "redis://ctx:none", "redis://res:none", "redis://ctx:n", "redis://res:n", "ctx:n",
    "redis://wf:run:x", "redis://ctx:n ", "redis://res:n\n", "", "redis://",
    "redis://redis://res:n"])
async def test_reading_at_a_pointer_refuses_and_misses_as_the_general_path(
        pointer: str) -> None:
    """``context_at_now``/``result_at_now`` skip the pointer check only for a pointer to a
    stored key; anything else gets ``key_from_pointer``'s own error, or ``NotFoundError``."""
    store = MemoryPayloadStore()
    path = json_payloads.path_for(store)
    path.put_context_now("ctx:n", path.encode({"a": 1}, True))
    path.put_result_now("res:n", path.encode({"b": 2}, False))
    await store.put_result("res:t", b'{"c": 3}')  # stored as text
    for at, prefix, get in ((path.context_at_now, "", store.get_context_payload),
                            (path.result_at_now, "res:", store.get_result_payload)):
        assert at is not None
        try:
            expected: Any = (await get(key_from_pointer(pointer, prefix))).value()
        except Exception as exc:
            expected = (type(exc), str(exc))
        try:
            got: Any = at(pointer).value()
        except Exception as exc:
            got = (type(exc), str(exc))
        assert got == expected
    assert path.result_at_now is not None
    assert path.result_at_now("redis://res:t").value() == {"c": 3}


class _BytesOnly(MemoryPayloadStore):
    """A store that changed the bytes path: payloads take it too."""

    async def get_context(self, key: str) -> bytes:
        return await super().get_context(key)


@pytest.mark.parametrize("store_class", [MemoryPayloadStore, _BytesOnly])
@pytest.mark.parametrize("value", [{}, {"ok": True}, {"a": (1, 2)}, [1, "x", None]])
async def test_a_store_path_gives_what_the_module_functions_give(
        store_class: type[MemoryPayloadStore], value: Any) -> None:
    store = store_class()
    path = json_payloads.path_for(store)
    for compact in (True, False):
        made = path.encode(value, compact)
        general = json_payloads.encode(store, value, compact=compact)
        assert type(made) is type(general)
        text = made.text() if isinstance(made, JsonPayload) else made
        assert text == (general.text() if isinstance(general, JsonPayload) else general)
    await path.put_result("res:p", path.encode(value, False))
    await json_payloads.put_result(store, "res:g", json_payloads.encode(store, value, False))
    assert await store.get_result("res:p") == await store.get_result("res:g")
    await json_payloads.put_context(store, "ctx:j", json_payloads.encode(store, value, True))
    assert repr((await path.get_context("ctx:j")).value()) == repr(
        (await json_payloads.get_context(store, "ctx:j")).value())
    with pytest.raises(NotFoundError):
        await path.get_context("ctx:none")
    with pytest.raises(PayloadPointerError):
        await path.get_context("wf:run:x")
    await path.put_context("ctx:p", path.encode(value, True))
    assert await store.get_context("ctx:p") == await store.get_context("ctx:j")
    assert repr((await path.get_result("res:p")).value()) == repr(
        (await json_payloads.get_result(store, "res:g")).value())
    with pytest.raises(NotFoundError):
        await path.get_result("res:none")
    with pytest.raises(PayloadPointerError):
        await path.put_context("res:p", path.encode(value, True))


_KEYS = ["ctx:run:s@1", "res:run:s@1", "res:é\tx", "ctx:a\nb", "res:a\rb", "res:a\x00b",
         "ctx:j ", "\tctx:j", "ctx:", "res:", "wf:run:x", "ctx", "", "ctx:\u2028x",
         "res:j\u00a0", 7, None, b"ctx:j", "res:j\u3000", "ctx:j\x85", "res:a b", "res:a\x0bb",
         "ctx:\x1f", "res:j\t", " res:j", "res:\u00e9", "ctx:\U0001f600", "res:\ud800",
         type("Key", (str,), {})("res:j")]


@pytest.mark.parametrize("key", _KEYS)
async def test_the_memory_store_writes_exactly_the_keys_the_namespace_rule_passes(
        key: Any) -> None:
    """``MemoryPayloadStore`` tests a key's common case without calling
    ``check_payload_key``: every write (bytes or payload, awaited or not) refuses with the
    rule's own error, or stores, exactly as the rule says."""
    store = MemoryPayloadStore()
    payload = JsonPayload.of({"a": 1}, compact=False)
    for prefix, now, awaited in (
            ("ctx:", store.put_context_payload_now, store.put_context),
            ("res:", store.put_result_payload_now, store.put_result)):
        try:
            expected: Any = check_payload_key(key, prefix)
        except Exception as exc:
            expected = (type(exc), str(exc))
        for kind in ("now", "awaited"):
            try:
                if kind == "now":
                    now(key, payload)
                else:
                    await awaited(key, payload.text())
                got: Any = key
            except Exception as exc:
                got = (type(exc), str(exc))
            assert got == expected


@pytest.mark.parametrize("data", [
    b'{"a":1}', b"[1, 2]", b"3", b'"s"', b"null", b"not json", b"", b"\xff\xfe{}",
    b"\xef\xbb\xbf{}",  # a byte order mark: json.loads refuses the text, the decoder too
    b'{"a": NaN}', b"{} x", b'{"big": "' + b"x" * 70_000 + b'"}',
])
def test_a_result_read_as_bytes_is_loaded_as_its_payload_would_be(data: bytes) -> None:
    """``effects.output_of`` (the engine's early read of a result, as bytes) loads what a
    ``JsonPayload`` of the same text would give (``value_or_text``, ``too_large``), and
    ``value_or_text_of`` is ``json.loads`` of the text, else the text."""
    from cordtrio.core.plan import MAX_INLINE_OUTPUT_BYTES
    from cordtrio.engine.effects import output_of

    payload = JsonPayload.of_text(data)
    output = output_of(data)
    assert (output.value, output.too_large, output.error, output.loaded) == (
        payload.value_or_text(), payload.too_large(MAX_INLINE_OUTPUT_BYTES), "", True)
    text = data.decode("utf-8", errors="replace")
    try:
        expected = json.loads(text)
    except ValueError:
        expected = text
    value = json_payloads.value_or_text_of(data)
    assert value == expected or (value != value and expected != expected)


@pytest.mark.parametrize("compact", [True, False])
def test_the_c_encoders_text_is_the_encoders_own(compact: bool) -> None:
    """``_text_of(encoder)`` (its C encoder, called directly) gives ``encoder.encode``'s
    text for every value, and raises what it raises; a failed encoding leaves nothing
    behind for the next (a cycle is still told apart from a value seen twice)."""
    encoder = json.JSONEncoder(separators=(",", ":")) if compact else json.JSONEncoder()
    text = json_payloads._text_of(encoder)
    assert text is not encoder.encode  # (the C encoder is there)
    shared = [1]
    for value in [*PLAIN, *ODD[:2], "plain", "\u2603", math.nan, -math.inf, 3,
                  {"twice": [shared, shared]}]:
        assert text(value) == encoder.encode(value)
    cycle: list[Any] = []
    cycle.append(cycle)
    for bad in [object(), {"x": {1, 2}}, [1, b"bytes"], cycle, {"k": {"deep": cycle}}]:
        with pytest.raises((TypeError, ValueError)) as raised:
            text(bad)
        with pytest.raises(type(raised.value)) as expected:
            encoder.encode(bad)
        assert str(raised.value) == str(expected.value)
        assert text({"after": [shared, shared]}) == encoder.encode({"after": [shared, shared]})


def test_the_scanned_decode_is_the_decoders_own() -> None:
    """``_decode`` (the decoder's scanner, called directly on a text with nothing around
    its value) gives ``JSONDecoder().decode``'s value (``json.loads``' but for its byte
    order mark check) for every text, and raises what it raises."""
    decode = json.JSONDecoder().decode
    texts = [json.dumps(v) for v in PLAIN if not isinstance(v, float)]
    texts += ['{"a": 1}', ' {"a": 1}', '{"a": 1} ', '{"a": 1}\n', "1", "-0.5",
              '"s"', "[1, 2]", "{}", "[]", "null", '{"n": 1e400}']
    for text in texts:
        assert json_payloads._decode(text) == decode(text) == json.loads(text), text
    for bad in ["", " ", "{", '{"a": 1} x', '{"a": 1}{}', "nope", '{"a": 1,}', "[1] 2",
                "\ufeff{}"]:
        with pytest.raises(ValueError) as raised:
            json_payloads._decode(bad)
        with pytest.raises(ValueError) as expected:
            decode(bad)
        assert str(raised.value) == str(expected.value)
