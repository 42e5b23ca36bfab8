"""Bus messages (mirroring cordum's CAP protocol) and their CBOR wire codec.

Packets are plain dataclasses (with ``slots``: the engine builds a ``JobRequest`` and reads a
``JobResult`` per step, and slotted fields are cheaper to set and read); ``encode_packet``/
``decode_packet`` turn them into CBOR bytes and back. Decoding anything that is not a packet
raises ``ProtocolError`` and nothing else, so a transport can drop a foreign frame with one
``except``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import IntEnum
from itertools import compress
from operator import attrgetter, itemgetter, or_, truth
from typing import Any, Literal, overload

import cbor2

from .codec_shapes import MAX_SHAPES, EncodeShape, decode_shape, learn_encode
from .errors import ProtocolError
from .fields import RECENT_TS_TEXTS
from .timeutil import format_ts, parse_ts

SUBJECT_SUBMIT = "sys.job.submit"
SUBJECT_RESULT = "sys.job.result"
SUBJECT_CANCEL = "sys.job.cancel"
SUBJECT_WORKFLOW_EVENT = "sys.workflow.event"
SUBJECT_PROGRESS = "sys.job.progress"
SUBJECT_HEARTBEAT = "sys.heartbeat"
SUBJECT_DLQ = "sys.job.dlq"

PROTOCOL_VERSION = 1


class JobStatus(IntEnum):
    """CAP job states; the numbers are the wire values."""

    UNSPECIFIED = 0
    PENDING = 1
    SCHEDULED = 2
    DISPATCHED = 3
    RUNNING = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7
    DENIED = 8
    TIMEOUT = 9


class JobPriority(IntEnum):
    UNSPECIFIED = 0
    INTERACTIVE = 1
    BATCH = 2
    CRITICAL = 3


class ActorType(IntEnum):
    UNSPECIFIED = 0
    HUMAN = 1
    SERVICE = 2


@dataclass(slots=True)
class Budget:
    max_input_tokens: int = 0
    max_output_tokens: int = 0
    max_total_tokens: int = 0
    deadline_ms: int = 0


@dataclass(slots=True)
class JobMetadata:
    tenant_id: str = ""
    actor_id: str = ""
    actor_type: ActorType = ActorType.UNSPECIFIED
    idempotency_key: str = ""
    capability: str = ""
    risk_tags: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    pack_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class JobRequest:
    job_id: str = ""
    topic: str = ""
    priority: JobPriority = JobPriority.UNSPECIFIED
    context_ptr: str = ""
    adapter_id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    parent_job_id: str = ""
    workflow_id: str = ""
    step_index: int = 0
    memory_id: str = ""
    budget: Budget | None = None
    tenant_id: str = ""
    principal_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    meta: JobMetadata | None = None


@dataclass(slots=True)
class JobResult:
    job_id: str = ""
    status: JobStatus = JobStatus.UNSPECIFIED
    result_ptr: str = ""
    worker_id: str = ""
    execution_ms: int = 0
    error_code: str = ""
    error_message: str = ""
    artifact_ptrs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class JobCancel:
    job_id: str = ""
    reason: str = ""
    requested_by: str = ""


@dataclass(slots=True)
class JobProgress:
    job_id: str = ""
    percent: int = 0
    message: str = ""
    result_ptr: str = ""
    artifact_ptrs: list[str] = field(default_factory=list)
    status: JobStatus = JobStatus.UNSPECIFIED


@dataclass(slots=True)
class SystemAlert:
    level: str = ""
    message: str = ""
    component: str = ""
    code: str = ""


@dataclass(slots=True)
class Heartbeat:
    worker_id: str = ""
    region: str = ""
    type: str = ""
    cpu_load: float = 0
    gpu_utilization: float = 0
    active_jobs: int = 0
    capabilities: list[str] = field(default_factory=list)
    pool: str = ""
    max_parallel_jobs: int = 0
    labels: dict[str, str] = field(default_factory=dict)


Payload = JobRequest | JobResult | JobCancel | JobProgress | SystemAlert | Heartbeat


@dataclass(slots=True)
class BusPacket:
    trace_id: str = ""
    sender_id: str = ""
    created_at: datetime | None = None
    protocol_version: int = PROTOCOL_VERSION
    payload: Payload | None = None


# ---------------------------------------------------------------------------------- codec

_PAYLOAD_TYPES: dict[str, type] = {
    "job_request": JobRequest,
    "job_result": JobResult,
    "job_cancel": JobCancel,
    "job_progress": JobProgress,
    "alert": SystemAlert,
    "heartbeat": Heartbeat,
}
_PAYLOAD_TAGS: dict[type, str] = {cls: tag for tag, cls in _PAYLOAD_TYPES.items()}
_TAG_SET = frozenset(_PAYLOAD_TYPES)
_NESTED: dict[tuple[type, str], type] = {
    (JobRequest, "budget"): Budget,
    (JobRequest, "meta"): JobMetadata,
}
_ENUMS: dict[tuple[type, str], type[IntEnum]] = {
    (JobRequest, "priority"): JobPriority,
    (JobResult, "status"): JobStatus,
    (JobProgress, "status"): JobStatus,
    (JobMetadata, "actor_type"): ActorType,
}
_ENUM_MEMBERS: dict[type[IntEnum], dict[int, IntEnum]] = {
    enum: {member.value: member for member in enum} for enum in _ENUMS.values()
}
"""A wire number's member per enum (a dict lookup: calling the enum runs Python code)."""
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list})
"""Classes no ``IntEnum`` is an instance of: a value of one is kept only when truthy."""
_ONLY_STR = frozenset({str})

# What decoding checks a field's value against (``_Plan.kinds``): one of these, the
# members of the field's ``IntEnum`` by number (a dict) or its nested class. Compared by
# identity.
_STR, _INT, _NUMBER, _BOOL, _STR_MAP, _STR_LIST, _ANY = (
    "str", "int", "number", "bool", "str_map", "str_list", "any")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the fields of one payload class go on the wire and come back, derived once per
    class from its dataclass fields (not per packet: the engine and a worker each encode
    and decode packets on every step)."""

    kinds: dict[str, Any]  # field name -> what its decoded value is checked against
    encode: Callable[[Any], dict[str, Any]]  # ``_to_plain`` of this class
    decode: Callable[[Any, str], Any]  # ``_from_plain`` of this class


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        kinds: dict[str, Any] = {}
        for f in fields(cls):
            kind: Any = _NESTED.get((cls, f.name))
            enum = _ENUMS.get((cls, f.name))
            if enum is not None:
                kind = _ENUM_MEMBERS[enum]
            elif kind is None:
                default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
                if isinstance(default, bool):
                    kind = _BOOL
                elif isinstance(default, (int, float)):
                    # annotations are strings here; 1.5 is no step_index
                    kind = _INT if f.type == "int" else _NUMBER
                elif isinstance(default, str):
                    kind = _STR
                elif isinstance(default, dict):
                    kind = _STR_MAP
                elif isinstance(default, list):
                    kind = _STR_LIST
                else:
                    kind = _ANY
            kinds[f.name] = kind
        plan = _PLANS[cls] = _Plan(kinds, *_compile(cls, kinds))
    return plan


# The checks of a decoded value ``v`` of each kind that ``_walk`` makes, for the classes
# cbor2 decodes to (anything else goes to ``_walk``).
_USUAL: dict[str, str] = {
    _STR: "v.__class__ is str", _INT: "v.__class__ is int", _BOOL: "v.__class__ is bool",
    _NUMBER: "(v.__class__ is float or v.__class__ is int)",
    _STR_MAP: "v.__class__ is dict and _is_str_map(v)",
    _STR_LIST: "v.__class__ is list and _is_str_list(v)",
}


_KEEP_EMPTY = "v is False or (v.__class__ not in _PLAIN_TYPES and isinstance(v, IntEnum))"
"""When an empty (falsy) value still goes on the wire: ``False`` and every ``IntEnum``."""
_EMPTY_CLASS: dict[str, str] = {_STR: "str", _INT: "int", _NUMBER: "int", _STR_MAP: "dict",
                                _STR_LIST: "list"}
"""The class of a field's usual empty value, by kind: such a value is dropped at once."""


def _at(expr: str, arg: str) -> str:
    """``expr`` (a test of a value ``v``) of the variable ``arg``."""
    return re.sub(r"\bv\b", arg, expr)


def _usual_empty(cls: type, name: str, kind: Any, env: dict[str, Any], i: int) -> str:
    """The generated encoder's first test of an empty value ``v`` (ending in ``and``, or
    ``""``): one that rules out ``_KEEP_EMPTY`` for the value a field usually holds when
    empty (``""`` for a string, ``None`` for a nested document); an enum field's member
    is kept at once (``e{i}``: its enum)."""
    enum = _ENUMS.get((cls, name))
    if enum is not None:
        env[f"e{i}"] = enum
        return f"v.__class__ is e{i} or "
    if (cls, name) in _NESTED:
        return "v is not None and "
    empty = _EMPTY_CLASS.get(kind) if kind.__class__ is str else None
    return f"v.__class__ is not {empty} and " if empty else ""


def _compile(cls: type, kinds: dict[str, Any]
             ) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any, str], Any]]:
    """Straight-line ``_to_plain`` and ``_from_plain`` for one class, generated once from
    its fields (as ``dataclasses`` generates ``__init__``): a loop over the fields costs
    the engine and a worker more on every packet than the packet's own CBOR.

    Encoding reads every field in one ``attrgetter`` call and writes each in order unless
    it is empty (``False`` and every ``IntEnum`` member are kept: cbor2 writes an
    ``IntEnum`` as its number); an empty value of the class the field's empty value
    usually has (``""``, ``0``, ``None``...) is dropped after one test. Decoding takes
    each field from the map (its default when absent) if its value has the usual class of
    its kind, converting enums and nested documents; at the first value that does not,
    it hands the map to ``_walk``, which goes field by field in the map's order and
    raises for the first bad one: the same packet, or the same error."""
    env: dict[str, Any] = {"cls": cls, "_to_plain": _to_plain, "_from_plain": _from_plain,
                           "_walk": _walk, "_is_str_map": _is_str_map,
                           "_is_str_list": _is_str_list, "_PLAIN_TYPES": _PLAIN_TYPES,
                           "IntEnum": IntEnum, "_MISSING": _MISSING, "ProtocolError": ProtocolError}
    names = [f.name for f in fields(cls)]
    # the fields read in one C call (``attrgetter``), each kept when truthy, else when
    # ``_KEEP_EMPTY`` says so, tested after the class its empty value usually has
    env["_get"] = attrgetter(*names)
    unpacked = "".join(f"v{i}, " for i in range(len(names)))
    enc = ["def encode(obj):", f" ({unpacked}) = _get(obj)" if len(names) > 1
           else " v0 = _get(obj)", " out = {}"]
    dec = ["def decode(data, where):", " if data.__class__ is not dict:",
           "  return _walk(cls, data, where)", " get = data.get"]
    args = []
    for i, f in enumerate(fields(cls)):
        name, kind, arg = f.name, kinds[f.name], f"v{i}"
        value = f"_to_plain({arg})" if (cls, name) in _NESTED else arg
        empty = _at(_usual_empty(cls, name, kind, env, i) + f"({_KEEP_EMPTY})", arg)
        enc += [f" if {arg}: out[{name!r}] = {value}",
                f" elif {empty}: out[{name!r}] = {value}"]
        if callable(f.default_factory):
            # a factory makes a map or list: a nested document or an enum here would be
            # taken as it came (the general walk converts them)
            if kind.__class__ is not str or (cls, name) in _NESTED:
                raise TypeError(f"{cls.__name__}.{name}: a default factory for a nested "
                                "document or an enum is not supported by the codec")
            env[f"new{i}"] = f.default_factory
            dec.append(f" {arg} = get({name!r}, _MISSING)")
            dec.append(f" if {arg} is _MISSING: {arg} = new{i}()")
            if kind in _USUAL:
                dec.append(f" elif not ({_at(_USUAL[kind], arg)}):"
                           " return _walk(cls, data, where)")
        else:
            env[f"d{i}"] = f.default
            dec.append(f" {arg} = get({name!r}, d{i})")
            if kind.__class__ is dict:  # an enum: its members by number
                env[f"m{i}"] = kind
                dec.append(f" if {arg}.__class__ is int: {arg} = m{i}.get({arg}, {arg})")
                dec.append(f" elif {arg} is not d{i}: return _walk(cls, data, where)")
            elif kind.__class__ is str:
                if kind in _USUAL:  # (else _ANY: anything goes); the class first: a
                    # present value usually has it, and so has the default
                    dec.append(f" if not ({_at(_USUAL[kind], arg)}) and {arg} is not d{i}:")
                    dec.append("  return _walk(cls, data, where)")
            else:  # a nested document (its default: None)
                env[f"k{i}"] = kind
                dec += [f" if {arg} is not None:", f"  if {arg}.__class__ is not dict:",
                        "   return _walk(cls, data, where)",
                        f"  try: {arg} = _from_plain(k{i}, {arg}, where + {'.' + name!r})",
                        "  except ProtocolError: return _walk(cls, data, where)"]
        args.append(arg)
    enc.append(" return out")
    dec.append(f" return cls({', '.join(args)})")
    source = "\n".join(enc) + "\n" + "\n".join(dec)
    exec(compile(source, f"<cordtrio.protocol codec of {cls.__name__}>", "exec"), env)
    if len(names) < 2:
        return env["encode"], env["decode"]
    return _by_shape(cls, kinds, env, env["encode"], env["decode"])


def _by_shape(cls: type, kinds: dict[str, Any], env: dict[str, Any],
              encode_fields: Callable[[Any], dict[str, Any]],
              decode_fields: Callable[[Any, str], Any],
              ) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any, str], Any]]:
    """``encode_fields`` and ``decode_fields`` (``_compile``'s field-by-field code) behind
    the short ways of the shapes met before (``codec_shapes``): a value's shape is the
    tuple of its fields' classes, read in one C call."""
    names = tuple(f.name for f in fields(cls))
    nested = {name: kind for (c, name), kind in _NESTED.items() if c is cls}
    factories = {f.name: f.default_factory for f in fields(cls)
                 if callable(f.default_factory)}
    defaults = {f.name: _MISSING if f.name in factories else f.default for f in fields(cls)}
    eshapes: dict[tuple[type, ...], EncodeShape | tuple[()]] = {}
    dshapes: dict[tuple[type, ...], Callable[[tuple[Any, ...], Any, str], Any]] = {}

    def encode_new(obj: Any, vals: tuple[Any, ...], shape: Any) -> dict[str, Any]:
        if shape is None:  # (a shape not learnt, ``()``, goes field by field every time)
            if len(eshapes) >= MAX_SHAPES:
                eshapes.clear()  # (odd values met first do not keep the usual out)
            key = tuple(map(type, vals))
            eshapes[key] = learn_encode(key, names, nested)
        return encode_fields(obj)

    def decode_new(data: Any, where: str, vals: tuple[Any, ...]) -> Any:
        if len(dshapes) >= MAX_SHAPES:
            dshapes.clear()
        key = tuple(map(type, vals))
        dshapes[key] = decode_shape(cls, names, kinds, factories, defaults, key, env) \
            or (lambda vals, data, where: decode_fields(data, where))
        return decode_fields(data, where)

    local = {"_get": env["_get"], "_eshapes": eshapes, "_dshapes": dshapes,
             "_encode_new": encode_new, "_decode_new": decode_new, "_to_plain": _to_plain,
             "_walk": _walk, "cls": cls, "_names": names,
             "_defaults": tuple(defaults[name] for name in names), "_tuple": tuple,
             "_map": map, "_type": type, "_dict": dict, "_zip": zip, "_compress": compress,
             "_or": or_, "_truth": truth}
    source = "\n".join([
        "def encode(obj):",
        " vals = _get(obj)",
        " shape = _eshapes.get(_tuple(_map(_type, vals)))",
        " if not shape: return _encode_new(obj, vals, shape)",
        " out = _dict(_compress(_zip(_names, vals), _map(_or, _map(_truth, vals), shape[0])))",
        " if shape[1]:",
        "  for name, doc in shape[1]: out[name] = _to_plain(out[name])",
        " return out",
        "def decode(data, where):",
        " if data.__class__ is not dict:",
        "  return _walk(cls, data, where)",
        " vals = _tuple(_map(data.get, _names, _defaults))",
        " shape = _dshapes.get(_tuple(_map(_type, vals)))",
        " if shape is None: return _decode_new(data, where, vals)",
        " return shape(vals, data, where)",
    ])
    exec(compile(source, f"<cordtrio.protocol codec of {cls.__name__}, by shape>", "exec"),
         local)
    local["encode"].shapes = eshapes  # (for tests: the shapes learnt)
    local["decode"].shapes = dshapes
    return local["encode"], local["decode"]


def _to_plain(obj: Any) -> dict[str, Any]:
    """The wire map of a payload (or nested document): its fields in order, without the
    empty ones (``False`` and every ``IntEnum`` are kept)."""
    return (_PLANS.get(obj.__class__) or _plan(obj.__class__)).encode(obj)


def _from_plain(cls: type, data: Any, where: str) -> Any:
    """A payload (or nested document) from its wire map; a value whose type does not match
    its field's default (strings, numbers, maps, lists) or enum raises ``ProtocolError``;
    unknown fields are ignored (forward compatible). See ``_compile``."""
    return (_PLANS.get(cls) or _plan(cls)).decode(data, where)


def _unexpected(where: str, name: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where}.{name}: unexpected type {type(value).__name__}")


def _is_str_map(value: Any) -> bool:
    # decoded CBOR text is exactly ``str``: a C pass over the keys and one over the values
    return isinstance(value, dict) and (
        (_ONLY_STR.issuperset(map(type, value))
         and _ONLY_STR.issuperset(map(type, value.values())))
        or all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and (
        _ONLY_STR.issuperset(map(type, value)) or all(isinstance(v, str) for v in value))


def _walk(cls: type, data: Any, where: str) -> Any:
    """``_from_plain`` field by field, in the map's order: the first bad value raises."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(data).__name__}")
    kinds = (_PLANS.get(cls) or _plan(cls)).kinds
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = kinds.get(name)
        if kind is None:
            continue  # forward compatible: ignore fields we do not know
        if kind is _STR:
            if value.__class__ is not str and not isinstance(value, str):
                raise _unexpected(where, name, value)
        elif kind is _INT:
            if value.__class__ is not int and (not isinstance(value, int)
                                               or isinstance(value, bool)):
                raise _unexpected(where, name, value)
        elif kind is _STR_MAP:
            if not _is_str_map(value):
                raise _unexpected(where, name, value)
        elif kind is _STR_LIST:
            if not _is_str_list(value):
                raise _unexpected(where, name, value)
        elif kind is _NUMBER:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _unexpected(where, name, value)
        elif kind is _BOOL:
            if not isinstance(value, bool):
                raise _unexpected(where, name, value)
        elif kind.__class__ is dict:  # an enum's members
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError(f"{where}.{name}: expected an integer enum, got {value!r}")
            # an unknown CAP number is kept as it is: the engine reports it
            value = kind.get(value, value)
        elif kind is not _ANY:  # a nested document
            value = None if value is None else _from_plain(kind, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ProtocolError(f"{where}: {exc}") from None


class _Encoders(dict[type, tuple[str, Callable[[Any], dict[str, Any]]] | None]):
    """Per payload class: its tag and its ``_to_plain`` (``encode_packet``: one lookup);
    None for any other class. Filled as classes are met (a codec is compiled once used)."""

    def __missing__(self, cls: type) -> tuple[str, Callable[[Any], dict[str, Any]]] | None:
        tag = _PAYLOAD_TAGS.get(cls)
        if tag is None:
            return None
        coded = self[cls] = (tag, _plan(cls).encode)
        return coded


class _Decoders(dict[str, Callable[[Any, str], Any]]):
    """Per payload tag: its class's ``_from_plain`` (``decode_packet``: one lookup)."""

    def __missing__(self, tag: str) -> Callable[[Any, str], Any]:
        decode = self[tag] = _plan(_PAYLOAD_TYPES[tag]).decode
        return decode


_ENCODERS = _Encoders()
_DECODERS = _Decoders()

_envelope = itemgetter("trace_id", "sender_id", "created_at", "protocol_version")


def _created_at(value: Any) -> datetime | None:
    """``parse_ts`` of a packet's ``created_at``; the text ``encode_packet`` writes (UTC,
    ``Z``) is parsed by ``fromisoformat`` alone, which gives the same datetime."""
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:
                return parsed
    return parse_ts(value, field="created_at")


def encode_packet(packet: BusPacket) -> bytes:
    """Serialize a packet to CBOR bytes."""
    if packet.__class__ is not BusPacket and not isinstance(packet, BusPacket):
        raise ProtocolError(f"encode_packet: expected a BusPacket, got {type(packet).__name__}")
    created = packet.created_at
    body: dict[str, Any] = {
        "trace_id": packet.trace_id,
        "sender_id": packet.sender_id,
        # the engine stamps a job request with the time its step write has just formatted
        "created_at": RECENT_TS_TEXTS.get(created) or format_ts(created),  # type: ignore[arg-type]
        "protocol_version": packet.protocol_version,
    }
    payload = packet.payload
    if payload is not None:
        coded = _ENCODERS[payload.__class__]
        if coded is None:
            raise ProtocolError(
                f"encode_packet: unknown payload type {type(payload).__name__}"
            )
        body[coded[0]] = coded[1](payload)
    try:
        return cbor2.dumps(body)
    except Exception as exc:
        raise ProtocolError(f"encode_packet: {exc}") from None


@overload
def decode_packet(data: bytes) -> BusPacket: ...
@overload
def decode_packet(data: bytes, bare: Literal[True]) -> Payload | None: ...


def decode_packet(data: bytes, bare: bool = False) -> BusPacket | Payload | None:
    """Parse CBOR bytes into a packet. Anything malformed raises ``ProtocolError``.
    ``bare``: return the packet's payload alone, the rest checked as for the packet
    (for a reader of the payload alone: no packet built)."""
    if data.__class__ is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"decode_packet: expected bytes, got {type(data).__name__}")
        data = bytes(data)
    try:
        body = cbor2.loads(data)
    except Exception as exc:
        raise ProtocolError(f"decode_packet: not CBOR: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"decode_packet: expected a map, got {type(body).__name__}")
    try:
        try:  # the envelope ``encode_packet`` writes: every key there, of the usual class
            trace_id, sender_id, created, version = _envelope(body)
            usual = (trace_id.__class__ is str and sender_id.__class__ is str
                     and version.__class__ is int)
        except KeyError:
            usual = False
        if not usual:  # checked one by one: a missing key takes its default
            trace_id = body.get("trace_id", "") or ""
            sender_id = body.get("sender_id", "") or ""
            version = body.get("protocol_version", PROTOCOL_VERSION)
            if not isinstance(trace_id, str) or not isinstance(sender_id, str):
                raise ProtocolError("decode_packet: trace_id/sender_id must be strings")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ProtocolError("decode_packet: protocol_version must be an integer")
            created = body.get("created_at")
        try:
            created = _created_at(created)
        except ValueError as exc:
            raise ProtocolError(f"decode_packet: {exc}") from None
        payload = None
        tags = body.keys() & _TAG_SET
        if tags:
            if len(tags) > 1:
                raise ProtocolError(f"decode_packet: more than one payload: "
                                    f"{[tag for tag in _PAYLOAD_TYPES if tag in tags]}")
            (tag,) = tags
            payload = _DECODERS[tag](body[tag], tag)
        if bare:
            return payload
        return BusPacket(trace_id, sender_id, created, version, payload)
    except ProtocolError:
        raise
    except Exception as exc:  # any surprise in a foreign frame is a protocol error
        raise ProtocolError(f"decode_packet: {exc!r}") from None


__all__ = [
    "PROTOCOL_VERSION",
    "SUBJECT_CANCEL",
    "SUBJECT_DLQ",
    "SUBJECT_HEARTBEAT",
    "SUBJECT_PROGRESS",
    "SUBJECT_RESULT",
    "SUBJECT_SUBMIT",
    "SUBJECT_WORKFLOW_EVENT",
    "ActorType",
    "Budget",
    "BusPacket",
    "Heartbeat",
    "JobCancel",
    "JobMetadata",
    "JobPriority",
    "JobProgress",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "Payload",
    "SystemAlert",
    "decode_packet",
    "encode_packet",
]
