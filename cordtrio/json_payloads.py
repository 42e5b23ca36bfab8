"""Job payloads as the engine and the worker hand them to a payload store: JSON, without
the text when the store is in-process.

A payload store keeps UTF-8 JSON bytes (``ports.PayloadStore``). A store in the same process
as the engine and the worker (``MemoryPayloadStore``) can also take and hand out a
``JsonPayload``: a value known to be plain JSON (dicts with string keys, lists, strings,
numbers, booleans, null), kept as an immutable snapshot, so that neither side formats or
parses any text. Nothing changes for the caller:

* ``JsonPayload.of`` accepts what ``json.dumps`` accepts and raises what it raises (a value
  that is not plain JSON — a tuple, an integer key, an unknown object, a cycle — takes the
  JSON path itself);
* ``value()`` gives what ``json.loads`` of the text would give, a fresh copy every time:
  mutating a value after it was put, or after it was read, never changes the stored one;
* ``text()`` is the very text the bytes path would have stored (compact separators for job
  inputs, ``json.dumps``' defaults for results), and ``too_large`` measures that text.

``put_context``/``get_context``/``put_result``/``get_result`` here pick the path: the
payload's own methods on a store that has them (``ValuePayloads``), the bytes otherwise.
"""

from __future__ import annotations

import json
import json.scanner
import marshal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple, Protocol

from .ports import PayloadStore, own_call

_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _text_of(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` without its Python frames (two, ~85 bytecodes on every payload):
    the C encoder ``JSONEncoder.iterencode`` builds on every call, built the same way, each
    call too (its ``markers``, the containers being encoded, by which it tells a cycle,
    must start empty: an encoding that raised leaves entries in it). ``encoder.encode``
    itself without the C encoder, or for settings it does not take.
    tests/test_json_payloads.py compares them."""
    if _make_encoder is None or encoder.indent is not None or not encoder.check_circular:
        return encoder.encode
    settings = (encoder.default,
                json.encoder.encode_basestring_ascii if encoder.ensure_ascii  # type: ignore[attr-defined]
                else json.encoder.encode_basestring,  # type: ignore[attr-defined]
                encoder.indent, encoder.key_separator, encoder.item_separator,
                encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)
    make, join = _make_encoder, "".join

    def text(value: Any) -> str:
        return join(make({}, *settings)(value, 0))

    return text


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""What the engine stores job inputs with (``json.dumps(..., separators=(",", ":"))``)."""
_DEFAULT = json.JSONEncoder()
"""What the worker stores results with (``json.dumps(value)``)."""
_COMPACT_TEXT = _text_of(_COMPACT)
_DEFAULT_TEXT = _text_of(_DEFAULT)

_MAX_DEPTH = 64  # deeper values take the JSON path (which sees cycles and recursion limits)
_MAX_INT_BITS = 4000  # ~1200 digits: far below the int-to-str digit limit json.dumps hits
_SCALAR_BOUND = {bool: 5, type(None): 4, float: 26}  # the longest text of each
_MAX_CHAR_TEXT = 12  # the longest text of one character: "\\ud83d\\ude00" for U+1F600
_SCALARS = frozenset({int, float, bool, type(None)})  # JSON's leaves but strings
_LEAVES = frozenset({str, *_SCALARS})
_KEY_TYPES = frozenset({str})  # a plain map's keys
_SHORT_FROZEN = 2 * _MAX_INT_BITS // 15  # no int above _MAX_INT_BITS marshals this short
TEXT_PER_FROZEN_BYTE = 7
"""A plain value's JSON text is at most this many times as long as its marshal (the bound
of a snapshot ``kept_of`` gives as bytes alone)."""
KEPT_TEXT_BOUND = TEXT_PER_FROZEN_BYTE * _SHORT_FROZEN
"""No snapshot ``kept_of`` gives as bytes alone stands for a text this long (it is shorter
than ``_SHORT_FROZEN``): a limit at least this is never passed by one."""
_new = object.__new__
_dumps, _loads = marshal.dumps, marshal.loads
_full_decode = json.JSONDecoder().decode
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _decode(text: str) -> Any:
    """``json.loads`` of a text, as ``json.loads`` itself decodes it (no options given). A
    text that is one JSON value with nothing around it (every payload stored) is scanned
    by the decoder's own scanner directly, without ``JSONDecoder.decode``'s two Python
    frames and whitespace passes; anything else, and every error, by ``decode`` itself
    (tests/test_json_payloads.py compares them)."""
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass  # not the plain case: ``decode`` decides (and names the error)
    return _full_decode(text)


def _bound(value: Any, depth: int) -> int:
    """An upper bound of the length of ``value``'s JSON text (either separator style), or
    -1 when ``value`` is not plain JSON."""
    cls = type(value)
    if cls is str:
        # every character escaped at worst: \\uXXXX, or a surrogate pair \\uXXXX\\uXXXX
        # for one outside the Basic Multilingual Plane
        return _MAX_CHAR_TEXT * len(value) + 2
    if cls is dict:
        if depth > _MAX_DEPTH:
            return -1
        total = 2
        for key, item in value.items():
            if type(key) is not str:
                return -1
            item_cls = type(item)
            if item_cls is str:  # the common leaves without a call (``_bound``'s own rules)
                size = _MAX_CHAR_TEXT * len(item) + 2
            elif item_cls in _SCALAR_BOUND:
                size = _SCALAR_BOUND[item_cls]
            else:
                size = _bound(item, depth + 1)
                if size < 0:
                    return -1
            total += _MAX_CHAR_TEXT * len(key) + 6 + size  # the key quoted, ": " and ", "
        return total
    if cls is list:
        if depth > _MAX_DEPTH:
            return -1
        total = 2
        for item in value:
            size = _bound(item, depth + 1)
            if size < 0:
                return -1
            total += size + 2
        return total
    if cls is int:
        bits = value.bit_length()
        return bits // 3 + 2 if bits <= _MAX_INT_BITS else -1
    return _SCALAR_BOUND.get(cls, -1)


def _plain(value: Any, depth: int) -> bool:
    """``_bound(value, depth) >= 0`` for a value whose ints need no check (its marshal is
    shorter than ``_SHORT_FROZEN``): the same walk, without the sizes."""
    cls = type(value)
    if cls is dict:
        if depth > _MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            item_cls = type(item)
            if item_cls is not str and item_cls not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if cls is list:
        if depth > _MAX_DEPTH:
            return False
        if _LEAVES.issuperset(map(type, value)):  # a list of leaves: one C-level pass
            return True
        for item in value:
            if type(item) not in _LEAVES and not _plain(item, depth + 1):
                return False
        return True
    return cls in _LEAVES


class JsonPayload:
    """One payload: its JSON text, or a plain JSON value kept as an immutable snapshot.

    Kept as one tuple, ``parts``: a store keeps that very tuple and wraps it again on a
    read (``of_parts``), without copying anything."""

    __slots__ = ("parts",)

    parts: tuple[bytes | None, bytes | None, int, bool]
    """The payload as a tuple of immutable values, for a store to keep: unlike the object,
    such a tuple is untracked by the cyclic garbage collector once it has seen it, and
    stores keep payloads for a day. (An attribute, not a method: read on every put.)"""

    def __init__(self, text: bytes | None, frozen: bytes | None, bound: int,
                 compact: bool) -> None:
        # text; marshal of a plain value (exact types, no shared parts); the text's length,
        # or an upper bound of it; whether the text has a job input's separators
        self.parts = (text, frozen, bound, compact)

    @classmethod
    def of(cls, value: Any, compact: bool) -> JsonPayload:
        """``value`` as a payload (``compact``: a job input's separators). Raises
        ``TypeError``/``ValueError`` exactly as ``json.dumps`` does (``parts_of``)."""
        payload = _new(cls)
        payload.parts = parts_of_kept(kept_of(value, compact), compact)  # ``parts_of``
        return payload

    @classmethod
    def of_text(cls, data: bytes) -> JsonPayload:
        """A payload a store kept as bytes (handed out as they are: bytes are immutable)."""
        payload = _new(cls)
        payload.parts = (data, None, len(data), False)
        return payload

    @classmethod
    def of_parts(cls, parts: tuple[bytes | None, bytes | None, int, bool]) -> JsonPayload:
        """The payload ``parts`` describes."""
        payload = _new(cls)
        payload.parts = parts
        return payload

    def value(self) -> Any:
        """A fresh copy of the value: ``json.loads`` of the text (``ValueError`` if the text
        is not JSON)."""
        frozen = self.parts[1]
        if frozen is _EMPTY_FROZEN:  # the shared empty object (most job inputs): no loads
            return {}
        if frozen is not None:
            return _loads(frozen)
        text = self.parts[0]
        assert text is not None
        if text.__class__ is bytes and text.startswith(b"{") and text[1:2] != b"\x00":
            # a JSON object in UTF-8 (every job input): what ``json.loads`` does with
            # it, without its Python-level ``detect_encoding`` and argument checks
            # (tests/test_json_payloads.py compares the two)
            return _decode(text.decode("utf-8", "surrogatepass"))
        return json.loads(text)

    def value_or_text(self) -> Any:
        """``value()``, or the text itself (decoded, bad bytes replaced) when it is not JSON:
        how the engine reads a result (SPEC §8)."""
        parts = self.parts
        if parts[1] is not None:
            return _loads(parts[1])
        assert parts[0] is not None
        return value_or_text_of(parts[0])

    def text(self) -> bytes:
        """The JSON text, as the bytes path stores it."""
        text, frozen, _, compact = self.parts
        if text is None:
            assert frozen is not None
            text = (_COMPACT_TEXT if compact else _DEFAULT_TEXT)(_loads(frozen)).encode()
            self.parts = (text, frozen, len(text), compact)
        return text

    def too_large(self, limit: int) -> bool:
        """The text is longer than ``limit`` bytes."""
        return self.parts[2] > limit and len(self.text()) > limit


def value_or_text_of(data: bytes) -> Any:
    """``JsonPayload.of_text(data).value_or_text()``, without the payload object (a result
    the engine read as bytes): the JSON value of ``data``, else its text (decoded, bad
    bytes replaced). Decoded as ``json.loads`` decodes a text, without its argument
    checks (a text it refuses for a byte order mark, the decoder refuses too)."""
    text = data.decode("utf-8", errors="replace")
    try:
        return _decode(text)
    except ValueError:
        return text


_EMPTY_FROZEN = _dumps({}, 2)  # the empty payloads' snapshot, known by its identity
_EMPTY_COMPACT = JsonPayload(b"{}", _EMPTY_FROZEN, 2, True)
_EMPTY_DEFAULT = JsonPayload(b"{}", _EMPTY_FROZEN, 2, False)


_Parts = tuple[bytes | None, bytes | None, int, bool]


def parts_of(value: Any, compact: bool) -> _Parts:
    """``JsonPayload.of(value, compact).parts``, without the payload object. Raises
    ``TypeError``/``ValueError`` exactly as ``json.dumps`` does."""
    return parts_of_kept(kept_of(value, compact), compact)


def parts_of_kept(kept: bytes | _Parts, compact: bool) -> _Parts:
    """The ``parts`` ``kept`` (from ``kept_of(value, compact)``) stands for."""
    if kept.__class__ is bytes:
        return (None, kept, TEXT_PER_FROZEN_BYTE * len(kept), compact)  # type: ignore[arg-type]
    return kept  # type: ignore[return-value]


def kept_of(value: Any, compact: bool) -> bytes | _Parts:
    """``parts_of(value, compact)`` as a store may keep it (``MemoryPayloadStore`` stores a
    value in one call): the snapshot bytes alone for a value whose marshal is short (most
    payloads: ``parts_of_kept(kept, compact)`` gives the parts back), else the parts. Bytes
    are never tracked by the cyclic garbage collector, which a tuple is until it has seen it
    once (stores keep payloads for a day). Raises as ``parts_of``."""
    # ``marshal`` refuses what it cannot encode (unknown objects, subclasses, cycles): that
    # takes the JSON path. What it accepts but JSON does not (tuples, sets, bytes, keys that
    # are not strings...) is told by the walk. A plain value's text is at most 7 bytes per
    # byte of its marshal (version 2: no shared references; the worst case is ``false`` and
    # its separator for the one byte of ``False`` in a list).
    if value.__class__ is dict:
        if not value:
            # the commonest job input (a run without input, a step without ``input``): the
            # parts of one payload made once, its text set so nothing ever changes them
            return _EMPTY_COMPACT.parts if compact else _EMPTY_DEFAULT.parts
        # A map of string keys to leaves (most results, most inputs) is plain JSON, told by
        # two C-level passes over its keys and values, and marshal takes it.
        if _KEY_TYPES.issuperset(map(type, value)) and \
                _LEAVES.issuperset(map(type, value.values())):
            frozen = _dumps(value, 2)
            if len(frozen) < _SHORT_FROZEN:
                return frozen
            return _by_marshal(value, frozen, compact)
    try:
        frozen = _dumps(value, 2)
    except ValueError:
        return _by_text(value, compact)
    return _by_marshal(value, frozen, compact)


def _by_marshal(value: Any, frozen: bytes, compact: bool) -> bytes | _Parts:
    """``kept_of(value, compact)`` for a value marshal took as ``frozen``."""
    if len(frozen) < _SHORT_FROZEN:
        if _plain(value, 0):
            return frozen
    else:
        bound = _bound(value, 0)
        if bound >= 0:
            return (None, frozen, bound, compact)
    return _by_text(value, compact)


def _by_text(value: Any, compact: bool) -> _Parts:
    """``kept_of(value, compact)`` by the JSON text (what is not plain JSON, or too deep)."""
    text = (_COMPACT_TEXT if compact else _DEFAULT_TEXT)(value).encode()
    return (text, None, len(text), compact)


class ValuePayloads(Protocol):
    """What an in-process payload store offers beside the bytes (``MemoryPayloadStore``):
    payloads kept and handed out as ``JsonPayload``, under the same keys, TTLs and errors."""

    async def put_context_payload(self, key: str, payload: JsonPayload) -> None: ...
    async def get_context_payload(self, key: str) -> JsonPayload: ...
    async def put_result_payload(self, key: str, payload: JsonPayload) -> None: ...
    async def get_result_payload(self, key: str) -> JsonPayload: ...


# ``getattr(payloads, "takes_json_payloads", False)`` picks the path: a store with
# ``ValuePayloads`` says so (``MemoryPayloadStore``); read in place, not through a helper,
# since these run four times per engine step.


def encode(payloads: PayloadStore, value: Any, compact: bool) -> JsonPayload | bytes:
    """``value`` as ``payloads`` takes it: a ``JsonPayload`` for an in-process store, the
    JSON bytes otherwise. Raises ``TypeError``/``ValueError`` as ``json.dumps`` does.
    (``compact`` may be passed by position: a keyword argument costs more on every job.)"""
    if getattr(payloads, "takes_json_payloads", False):
        return JsonPayload.of(value, compact)
    return (_COMPACT_TEXT if compact else _DEFAULT_TEXT)(value).encode()


def _encode_bytes(value: Any, compact: bool) -> bytes:
    """``encode`` for a store that takes bytes (``path_for``'s: its store told apart once)."""
    return (_COMPACT_TEXT if compact else _DEFAULT_TEXT)(value).encode()


# The four calls below return the store's own awaitable rather than awaiting it in a
# coroutine of their own: one coroutine fewer on each of the four payload calls of a step.


def put_context(payloads: PayloadStore, key: str,
                data: JsonPayload | bytes) -> Awaitable[None]:
    """Store a job input made by ``encode`` (await the result)."""
    if isinstance(data, JsonPayload):
        if getattr(payloads, "takes_json_payloads", False):
            return payloads.put_context_payload(key, data)  # type: ignore[attr-defined, no-any-return]
        data = data.text()
    return payloads.put_context(key, data)


def put_result(payloads: PayloadStore, key: str,
               data: JsonPayload | bytes) -> Awaitable[None]:
    """Store a job result made by ``encode`` (await the result)."""
    if isinstance(data, JsonPayload):
        if getattr(payloads, "takes_json_payloads", False):
            return payloads.put_result_payload(key, data)  # type: ignore[attr-defined, no-any-return]
        data = data.text()
    return payloads.put_result(key, data)


def get_context(payloads: PayloadStore, key: str) -> Awaitable[JsonPayload]:
    """A job input, whichever way the store keeps it (await the result)."""
    if getattr(payloads, "takes_json_payloads", False):
        return payloads.get_context_payload(key)  # type: ignore[attr-defined, no-any-return]
    return _of_text(payloads.get_context(key))


def get_result(payloads: PayloadStore, key: str) -> Awaitable[JsonPayload]:
    """A job result, whichever way the store keeps it (await the result)."""
    if getattr(payloads, "takes_json_payloads", False):
        return payloads.get_result_payload(key)  # type: ignore[attr-defined, no-any-return]
    return _of_text(payloads.get_result(key))


async def _of_text(read: Awaitable[bytes]) -> JsonPayload:
    return JsonPayload.of_text(await read)


class StorePath(NamedTuple):
    """``encode`` and the four payload calls for one store, its path picked once
    (``path_for``): a worker loads an input and stores a result on every job, the engine
    stores an input and loads a result, and each calls the store's own methods then,
    without a call here and a ``getattr`` per payload."""

    encode: Callable[[Any, bool], JsonPayload | bytes]
    """``encode(value, compact)``."""
    get_context: Callable[[str], Awaitable[JsonPayload]]
    """``get_context(key)``."""
    put_result: Callable[[str, Any], Awaitable[None]]
    """``put_result(key, data)``, ``data`` made by this path's ``encode``."""
    put_context: Callable[[str, Any], Awaitable[None]]
    """``put_context(key, data)``, ``data`` made by this path's ``encode``."""
    get_result: Callable[[str], Awaitable[JsonPayload]]
    """``get_result(key)``."""
    # An in-process store's own calls, not awaited (``MemoryPayloadStore.calls_now``); None
    # for other stores. They raise what the awaited calls raise, with no cancellation check.
    put_context_now: Callable[[str, Any], None] | None = None
    context_at_now: Callable[[str], JsonPayload] | None = None
    """The job input a context *pointer* names: ``get_context(key_from_pointer(ptr))``."""
    put_result_now: Callable[[str, Any], None] | None = None
    result_at_now: Callable[[str], JsonPayload] | None = None
    """The result a result *pointer* names:
    ``get_result(key_from_pointer(ptr, RESULT_PREFIX))``."""
    output_at_now: Callable[[str, int], tuple[Any, bool]] | None = None
    """What the engine records of the result a result pointer names (SPEC §8):
    ``(data.value_or_text(), data.too_large(limit))`` of ``data = result_at_now(ptr)``
    (``output_at_now(ptr, limit)``)."""
    store_context_now: Callable[[str, Any], None] | None = None
    """``put_context_now(key, encode(value, True))`` in one call (``store_context_now(key,
    value)``): ``encode``'s errors, then ``put_context_now``'s."""
    store_result_now: Callable[[str, Any], None] | None = None
    """``put_result_now(key, encode(value, False))`` in one call (``store_result_now(key,
    value)``): ``encode``'s errors, then ``put_result_now``'s."""
    result_then: Callable[[str, Callable[[bytes | None], None]], bool] | None = None
    """A bytes store's read of a result *key* whose reply goes to a callback
    (``result_then(key, done)``: ``done(data)``, ``done(None)`` if it failed; False if it
    cannot be read so; ``ValueError``, nothing read, for a key outside ``res:``: the
    engine hands it the key unchecked), when the store offers it (``reads_results_then``,
    ``RedisPayloadStore.get_result_then``); else None."""
    result_put_then: Callable[[str, Any, Callable[[Any], None]], bool] | None = None
    """A bytes store's write of a result (``result_put_then(key, data, done)``, ``data``
    made by this path's ``encode``) whose outcome goes to a callback: ``done(reply)``, a
    true reply once stored, None if it failed; False if it cannot be written so. When the
    store offers it (``writes_results_then``, ``RedisPayloadStore.put_result_then``)."""
    context_at: Callable[[str], Awaitable[bytes]] | None = None
    """A bytes store's read of the job input a context *pointer* names, in one call
    (``context_at(ptr)``: ``payloads.get_context(key_from_pointer(ptr))``, the same
    errors), when the store offers it (``reads_contexts_at``, ``RedisPayloadStore.
    get_context_at``); else None."""
    input_at_now: Callable[[str], Any] | None = None
    """``context_at_now(ptr).value()`` in one call when the input is an in-process
    snapshot (most job inputs), else None: then read it with ``context_at_now``."""


def path_for(payloads: PayloadStore) -> StorePath:
    """The functions above, bound to ``payloads`` (the same answers, by the same path)."""
    if getattr(payloads, "takes_json_payloads", False):
        store: Any = payloads
        path = StorePath(JsonPayload.of, store.get_context_payload, store.put_result_payload,
                         store.put_context_payload, store.get_result_payload)
        if own_call(store, "calls_now", "get_context_payload_now"):
            path = path._replace(put_context_now=store.put_context_payload_now,
                                 context_at_now=store.context_payload_at_now,
                                 put_result_now=store.put_result_payload_now,
                                 result_at_now=store.result_payload_at_now,
                                 output_at_now=store.result_output_at_now,
                                 store_context_now=store.put_context_value_now,
                                 store_result_now=store.put_result_value_now,
                                 input_at_now=store.context_value_at_now)
        return path
    return StorePath(_encode_bytes, partial(get_context, payloads),
                     partial(put_result, payloads), partial(put_context, payloads),
                     partial(get_result, payloads),
                     result_then=own_call(payloads, "reads_results_then", "get_result_then"),
                     result_put_then=own_call(payloads, "writes_results_then",
                                              "put_result_then"),
                     context_at=own_call(payloads, "reads_contexts_at", "get_context_at"))


__all__ = [
    "KEPT_TEXT_BOUND",
    "TEXT_PER_FROZEN_BYTE",
    "JsonPayload",
    "StorePath",
    "ValuePayloads",
    "encode",
    "get_context",
    "get_result",
    "kept_of",
    "parts_of",
    "parts_of_kept",
    "path_for",
    "put_context",
    "put_result",
    "value_or_text_of",
]
