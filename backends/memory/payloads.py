"""In-memory payload store: job inputs (``ctx:<job>``) and results (``res:<job>``) as bytes,
or as ``JsonPayload`` values (``cordtrio.json_payloads``): the engine and a worker in the same
process then hand each other plain JSON values without formatting or parsing text. Either
form can be read either way (the bytes are the JSON text the bytes path would have stored).
Every entry is kept as a payload's ``parts`` (bytes written as bytes: those of a text
payload, read back as the very bytes), or, for most values, as their snapshot bytes alone
(``json_payloads.kept_of``): an object the cyclic garbage collector never tracks.

Entries expire ``ttl_seconds`` after their last write (default 24 h, like the Redis
backend), measured on Trio's clock so ``MockClock`` can skip the time in tests: the clock of
the ``trio.run`` that first writes with a TTL (a store's expiry times are on that
clock; it is asked directly from then on, not looked up on every call: for Trio's own
``SystemClock``, that is ``perf_counter``, which differs from it by a fixed offset; a store
without a TTL never asks it: its clock reads 0.0 and its entries never expire). With one TTL
for every entry, expiry order is write order: the expiry times are kept apart, in write
order, and every read and write first purges the entries expired by then (once the clock
passes the next expiry), so an entry present is live, and memory stays bounded by the
entries written within one TTL.
"""

from __future__ import annotations

import marshal
import math
import re
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any
from weakref import ref

from trio.lowlevel import checkpoint_if_cancelled, current_clock

from cordtrio.errors import NotFoundError
from cordtrio.json_payloads import (
    KEPT_TEXT_BOUND,
    TEXT_PER_FROZEN_BYTE,
    JsonPayload,
    kept_of,
    parts_of_kept,
)
from cordtrio.payloads import (
    CONTEXT_PREFIX,
    POINTER_SCHEME,
    RESULT_PREFIX,
    check_payload_key,
    key_from_pointer,
)

DEFAULT_TTL_SECONDS = 24 * 3600.0
_Parts = tuple[bytes | None, bytes | None, int, bool]  # a JsonPayload's ``parts``
# An entry as kept: its parts, or ``kept_of``'s snapshot bytes alone for those of the
# separators of its half (compact in the ``ctx:`` half, the default ones in ``res:``)
_Entry = _Parts | bytes
_NEVER = math.inf  # when a store without a TTL purges: never
_HALVES = {CONTEXT_PREFIX: 0, RESULT_PREFIX: 1}  # which of ``_halves`` keeps a prefix's keys
_COMPACT = (True, False)  # the separators of the snapshots kept as bytes alone, by half
_EMPTY_INPUT = JsonPayload.of({}, True).parts  # how the empty job input (``{}``) is kept


def _key_rule(prefix: str) -> Callable[[str], object]:
    """``check_payload_key(key, prefix)``'s common case as one C-level match (None when it
    is not that case): the prefix, then no line break or NUL, and no white space (as
    ``str.strip`` sees it: ``\\s`` is ``str.isspace``) or NUL as the last character."""
    return re.compile(re.escape(prefix) + r"[^\n\r\x00]*[^\s\x00]").fullmatch


def _writer(prefix: str, compact: bool | None = None
            ) -> Callable[[MemoryPayloadStore, str, Any], None]:
    """The write of a payload at a key of the ``prefix`` half of the namespace
    (``PayloadPointerError`` for any other key, and nothing is stored). With ``compact``
    (True or False) it takes a value instead, made a payload as ``JsonPayload.of(value,
    compact)`` before anything else (its errors before the key's)."""
    half = _HALVES[prefix]
    common_key = _key_rule(prefix)
    # what is kept of the data: a payload's parts, or a value's (``JsonPayload.of(value,
    # compact).parts``, as kept); the commonest job input, ``{}``, told without a call
    # (``kept_of`` knows it too: a result, rarely empty, goes straight there)
    keep: Callable[[Any, bool], _Entry] = _parts_given if compact is None else kept_of
    empty = _EMPTY_INPUT if compact else None
    assert compact is None or compact is _COMPACT[half]  # (what its bytes alone stand for)
    separators = bool(compact)

    def put(store: MemoryPayloadStore, key: str, data: Any) -> None:
        kept: _Entry
        if empty is not None and data.__class__ is dict and not data:
            kept = empty
        else:
            kept = keep(data, separators)
        if key.__class__ is not str or common_key(key) is None:
            check_payload_key(key, prefix)  # its error (a str subclass is refused too)
        pointer = POINTER_SCHEME + key  # entries are kept by pointer: a read looks it up
        entries = store._halves[half]
        # One path with a TTL or without (then the clock reads 0.0, entries live forever,
        # the purge never comes and the purge order keeps nothing)
        now = store._write_now()
        if now >= store._purge_at:
            store._purge(now)
        if pointer in entries:  # its earlier place in the purge order is left behind
            store._leave_place(pointer)
        entries[pointer] = kept
        store._order.extend((pointer, now))  # its place in the purge order, and its time

    return put


def _reader(prefix: str, pointer_prefix: str) -> Callable[[MemoryPayloadStore, str], JsonPayload]:
    """The read of the payload a pointer to a ``prefix`` key names: one dict lookup of the
    pointer itself when it is that of a stored entry (only checked keys are stored, in the
    half of their prefix: it needs no check again); any other pointer takes the general
    path, ``key_from_pointer(pointer, pointer_prefix)``, and its errors."""
    half = _HALVES[prefix]
    compact = _COMPACT[half]

    def read(store: MemoryPayloadStore, pointer: str) -> JsonPayload:
        # entries expired by now are purged first (a store that has kept nothing yet, or
        # without a TTL, never asks Trio's clock: it may be read outside Trio)
        if store._clock_now() >= store._purge_at:
            store._purge(store._clock_now())
        try:
            entry = store._halves[half].get(pointer)
        except TypeError:  # not hashable: not a pointer (the general path says so)
            entry = None
        if entry is not None:
            payload = _new(JsonPayload)  # ``JsonPayload.of_parts``, without the call
            payload.parts = entry if entry.__class__ is tuple else _parts(entry, compact)
            return payload
        return _payload(store._get(key_from_pointer(pointer, pointer_prefix), prefix))

    return read


def _output_at(store: MemoryPayloadStore, pointer: str, limit: int) -> tuple[Any, bool]:
    """What the engine records of the result a result pointer names (SPEC §8): the
    payload's ``(value_or_text(), too_large(limit))``, read as ``result_payload_at_now``
    reads it. A snapshot within ``limit`` (most results) is decoded here, without the
    payload object or its two calls (``tests/engine/test_effects_now.py`` compares)."""
    # entries expired by now are purged first (a store that has kept nothing yet, or
    # without a TTL, never asks Trio's clock: it may be read outside Trio)
    if store._clock_now() >= store._purge_at:
        store._purge(store._clock_now())
    entry: Any  # (an ``_Entry``: mypy does not narrow by ``__class__``)
    try:
        entry = store._results.get(pointer)
    except TypeError:  # not hashable: not a pointer (the general path says so)
        entry = None
    if entry.__class__ is bytes:  # a snapshot alone (``kept_of``): most results
        # ``too_large``'s first test (passed by all when ``limit`` is the engine's)
        if limit >= KEPT_TEXT_BOUND or TEXT_PER_FROZEN_BYTE * len(entry) <= limit:
            return _loads(entry), False
        payload = _payload(_parts(entry, False))
    elif entry is None:
        payload = _payload(store._get(key_from_pointer(pointer, RESULT_PREFIX), RESULT_PREFIX))
    elif entry[2] <= limit and entry[1] is not None:  # ``too_large``'s first test
        return _loads(entry[1]), False
    else:
        payload = _payload(entry)
    return payload.value_or_text(), payload.too_large(limit)


def _input_at(store: MemoryPayloadStore, pointer: str) -> Any:
    """The value of the job input a context pointer names, when it is a snapshot live in
    this store (what the engine stores): ``context_payload_at_now(pointer).value()`` in
    one call, without the payload object or its call; None for anything else (then read
    it that way: ``tests/test_memory_fast_paths.py`` compares)."""
    # entries expired by now are purged first (a store that has kept nothing yet, or
    # without a TTL, never asks Trio's clock: it may be read outside Trio)
    if store._clock_now() >= store._purge_at:
        store._purge(store._clock_now())
    entry: Any  # (an ``_Entry``: mypy does not narrow by ``__class__``)
    try:
        entry = store._contexts.get(pointer)
    except TypeError:  # not hashable: not a pointer
        return None
    if entry is _EMPTY_INPUT:  # the shared empty input (most jobs'): no ``loads``
        return {}
    if entry is None:
        return None
    if entry.__class__ is bytes:  # a snapshot alone (``kept_of``)
        return _loads(entry)
    frozen = entry[1]
    if frozen is not None:
        return _loads(frozen)
    return None


def _parts_given(payload: JsonPayload, separators: bool) -> _Parts:
    """A payload as kept (``_writer``'s ``keep`` for a payload): its parts."""
    return payload.parts


_put_context, _put_result = _writer(CONTEXT_PREFIX), _writer(RESULT_PREFIX)
_SCHEME_LENGTH = len(POINTER_SCHEME)


class MemoryPayloadStore:
    """Bytes by key with a TTL. ``ttl_seconds=None`` (or ``<= 0``) keeps entries forever.

    Context and result keys share one key space, as in Redis: ``*_context`` take only
    ``ctx:<job>`` keys, ``*_result`` only ``res:<job>`` keys; any other key raises
    ``PayloadPointerError`` (``cordtrio.payloads.check_payload_key``) and nothing is read.

    Every method is a cancellation point (it raises ``Cancelled`` in a cancelled scope) but
    not a schedule point: a dict lookup need not give up the CPU, and the engine and the
    worker do several of these per step.
    """

    takes_json_payloads = True
    """``json_payloads.ValuePayloads`` is offered (False in a subclass that overrides the bytes
    methods, to count or fail calls: every payload then takes the bytes path)."""

    calls_now = True
    """The ``*_payload_now`` methods may be called instead of awaiting the ``*_payload``
    ones (``json_payloads.path_for``): the engine and a worker in this process then skip a
    coroutine and a cancellation check per payload. False in a subclass that overrides any
    payload method (to count or fail calls: those go through the methods it overrides)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if any(name in cls.__dict__ for name in _BYTES_METHODS):
            cls.takes_json_payloads = False
        if any(name in cls.__dict__ for name in (*_BYTES_METHODS, *_VALUE_METHODS)):
            cls.calls_now = False

    def __init__(self, *, ttl_seconds: float | None = DEFAULT_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds if ttl_seconds is not None and ttl_seconds > 0 else None
        # Per half of the namespace (``ctx:`` keys, ``res:`` keys), the live entries by
        # pointer (``redis://<key>``, what a read is given): pointer -> JsonPayload.parts
        # (bytes written as bytes: a text payload's), or its snapshot alone (``_Entry``).
        # No expiry time of its own: every read and write purges the expired entries first.
        self._halves: tuple[dict[str, _Entry], dict[str, _Entry]] = ({}, {})
        self._contexts, self._results = self._halves  # each by name (a read per engine step)
        # The pointers in write order, which with one TTL for every entry is expiry order,
        # each followed by the clock's reading at that write: pointer, time, pointer, time...
        # (flat rather than pairs: the garbage collector tracks a pair, never a float). A key
        # written again (or deleted) leaves its earlier place behind: counted here, so the
        # purge skips it. A store without a TTL keeps no order (``maxlen=0``: nothing is
        # kept) and never purges: its clock reads 0.0, the next expiry is infinity.
        self._order: deque[str | float] = deque(maxlen=None if self._ttl is not None else 0)
        self._left_behind: dict[str, int] = {}
        # when the oldest place in the order expires (a purge is due then): never while
        # nothing is kept (the first write's clock reading sets it)
        self._purge_at = _NEVER
        # Trio's clock reading, once known (see the module docstring): a write's first
        # reading (``_write_now``, a ``_FirstClockRead`` until then) finds it and makes it
        # both. Until a store has kept anything, a read compares with a constant
        # (``float()``, 0.0), nothing being there to expire: it works outside Trio too, and
        # does not bind the store to a ``trio.run``'s clock. A store without a TTL never
        # needs the clock: its entries expire at infinity, its clock is that constant.
        self._clock_now: Callable[[], float] = float
        self._write_now: Callable[[], float] = float if self._ttl is None \
            else _FirstClockRead(self)

    async def put_context(self, key: str, data: bytes) -> None:
        await checkpoint_if_cancelled()
        key = check_payload_key(key, CONTEXT_PREFIX)  # the key's error before the data's
        _put_context(self, key, _of_text(_private(key, data)))

    async def get_context(self, key: str) -> bytes:
        await checkpoint_if_cancelled()
        return _text(self._get(key, CONTEXT_PREFIX))

    async def put_result(self, key: str, data: bytes) -> None:
        await checkpoint_if_cancelled()
        key = check_payload_key(key, RESULT_PREFIX)  # the key's error before the data's
        _put_result(self, key, _of_text(_private(key, data)))

    async def get_result(self, key: str) -> bytes:
        await checkpoint_if_cancelled()
        return _text(self._get(key, RESULT_PREFIX))

    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        await checkpoint_if_cancelled()
        key = check_payload_key(key)
        pointer = POINTER_SCHEME + key
        if self._entries_of(key).pop(pointer, None) is not None:
            self._leave_place(pointer)

    # ------------------------------------------------ json_payloads.ValuePayloads

    async def put_context_payload(self, key: str, payload: JsonPayload) -> None:
        await checkpoint_if_cancelled()
        _put_context(self, key, payload)

    async def get_context_payload(self, key: str) -> JsonPayload:
        await checkpoint_if_cancelled()
        return _payload(self._get(key, CONTEXT_PREFIX))

    async def put_result_payload(self, key: str, payload: JsonPayload) -> None:
        await checkpoint_if_cancelled()
        _put_result(self, key, payload)

    async def get_result_payload(self, key: str) -> JsonPayload:
        await checkpoint_if_cancelled()
        return _payload(self._get(key, RESULT_PREFIX))

    # ---------------------------- the same, called without awaiting (``calls_now``)

    # The two writes and two reads of every step (an engine and a worker make them):
    # functions made for each half of the namespace, so each is one call
    put_context_payload_now = _put_context
    """``put_context_payload(key, payload)``, not awaited."""
    put_result_payload_now = _put_result
    """``put_result_payload(key, payload)``, not awaited."""
    put_context_value_now = _writer(CONTEXT_PREFIX, True)
    """``put_context_payload_now(key, JsonPayload.of(value, True))`` in one call: how the
    engine stores a job's input (``JsonPayload.of``'s errors, then the key's)."""
    context_payload_at_now = _reader(CONTEXT_PREFIX, "")
    """``get_context_payload_now(key_from_pointer(pointer))``: how a worker reads its
    input."""
    put_result_value_now = _writer(RESULT_PREFIX, False)
    """``put_result_payload_now(key, JsonPayload.of(value, False))`` in one call: how a
    worker stores a job's output (``JsonPayload.of``'s errors, then the key's)."""
    context_value_at_now = _input_at
    """``context_payload_at_now(pointer).value()`` when the input is a live snapshot, else
    None (``context_value_at_now(pointer)``): how a worker reads its input."""
    result_payload_at_now = _reader(RESULT_PREFIX, RESULT_PREFIX)
    """``get_result_payload_now(key_from_pointer(pointer, RESULT_PREFIX))``."""
    result_output_at_now = _output_at
    """``(payload.value_or_text(), payload.too_large(limit))`` of
    ``result_payload_at_now(pointer)`` (``result_output_at_now(pointer, limit)``): how the
    engine reads a result."""

    def get_context_payload_now(self, key: str) -> JsonPayload:
        return _payload(self._get(key, CONTEXT_PREFIX))

    def get_result_payload_now(self, key: str) -> JsonPayload:
        return _payload(self._get(key, RESULT_PREFIX))

    # ---------------------------------------------------------------------- entries

    def _entries_of(self, key: str) -> dict[str, _Entry]:
        """The half of the entries that keeps ``key`` (a checked key)."""
        return self._halves[not key.startswith(CONTEXT_PREFIX)]

    def _get(self, key: str, prefix: str) -> _Parts:
        """The parts of the entry at ``key``, a key of the ``prefix`` half of the namespace
        (``PayloadPointerError`` for any other key, before ``NotFoundError``)."""
        # entries expired by now are purged first (a store that has kept nothing yet, or
        # without a TTL, never asks Trio's clock: it may be read outside Trio)
        if self._clock_now() >= self._purge_at:
            self._purge(self._clock_now())
        half = _HALVES[prefix]
        entry = self._halves[half].get(POINTER_SCHEME + key) if key.__class__ is str else None
        if entry is None:
            # Only a key that passed ``check_payload_key`` is ever stored, in the half of
            # its prefix: a stored key needs no check; any other gets it (and its error).
            check_payload_key(key, prefix)
            raise NotFoundError(f"payload {key!r} not found")
        return entry if entry.__class__ is tuple else _parts(entry, _COMPACT[half])

    def _leave_place(self, pointer: str) -> None:
        """A stored entry is written again or deleted: its place in the purge order is left
        behind, for the purge to pass (a store without a TTL keeps no order)."""
        if self._ttl is not None:
            self._left_behind[pointer] = self._left_behind.get(pointer, 0) + 1

    def _purge(self, now: float) -> None:
        """Drop the entries expired at ``now``, oldest first; O(1) amortised per write."""
        order, left_behind = self._order, self._left_behind
        assert self._ttl is not None
        ttl = self._ttl
        while order:
            expiry = order[1] + ttl  # type: ignore[operator]
            if expiry > now:
                self._purge_at = expiry
                return
            pointer: Any = order.popleft()
            order.popleft()  # its time
            behind = left_behind.get(pointer)
            if behind:  # a place the key left behind: its entry is further on (or gone)
                if behind > 1:
                    left_behind[pointer] = behind - 1
                else:
                    del left_behind[pointer]
            else:
                del self._entries_of(pointer[_SCHEME_LENGTH:])[pointer]
        self._purge_at = now + ttl  # no entry: none expires before the next one


class _FirstClockRead:
    """A store's first clock reading, by its first write: it finds Trio's clock (that of the
    first ``trio.run`` to write: see the module docstring) and makes it the store's
    ``_write_now`` and ``_clock_now``, so every later reading is one call of the clock
    itself, not a test of whether it is known yet.
    For Trio's own ``SystemClock`` (``offset + perf_counter()``, its offset fixed), that is
    ``perf_counter``: the store only compares its own readings, which differ by the same
    amounts on both, and a C function runs no Python frame (four clock reads per engine
    step). It holds the store weakly (a bound method would make the store a cycle)."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryPayloadStore) -> None:
        self._store = ref(store)

    def __call__(self) -> float:
        clock = current_clock()
        cls = type(clock)
        now = perf_counter if (
            cls.__name__ == "SystemClock" and cls.__module__.startswith("trio.")) \
            else clock.current_time
        reading = now()
        store = self._store()
        if store is not None:
            store._write_now = store._clock_now = now
            assert store._ttl is not None
            store._purge_at = reading + store._ttl  # nothing kept: this write's expires first
        return reading


_BYTES_METHODS = ("put_context", "get_context", "put_result", "get_result")
_VALUE_METHODS = (*(f"{name}_payload{now}" for name in _BYTES_METHODS for now in ("", "_now")),
                  "context_payload_at_now", "result_payload_at_now", "put_context_value_now",
                  "result_output_at_now", "put_result_value_now", "context_value_at_now")


def _private(key: str, data: bytes) -> bytes:
    """``data`` as the store keeps it: bytes are immutable and kept as they are."""
    if type(data) is bytes:
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload {key!r}: expected bytes, got {type(data).__name__}")
    return bytes(data)  # a private copy of a mutable buffer


def _payload(parts: _Parts) -> JsonPayload:
    payload = _new(JsonPayload)  # ``JsonPayload.of_parts``, without the call
    payload.parts = parts
    return payload


_parts = parts_of_kept  # an entry kept as bytes alone, as its parts


def _text(parts: _Parts) -> bytes:
    return _payload(parts).text()


_of_text = JsonPayload.of_text  # bytes written as bytes: kept as the text of a payload
_new = object.__new__
_loads = marshal.loads


__all__ = ["DEFAULT_TTL_SECONDS", "MemoryPayloadStore"]
