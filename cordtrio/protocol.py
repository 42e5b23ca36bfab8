"""Bus messages (mirroring cordum's CAP protocol) and their CBOR wire codec.

Packets are plain dataclasses (with ``slots``: the engine builds a ``JobRequest`` and reads a
``JobResult`` per step, and slotted fields are cheaper to set and read); ``encode_packet``/
``decode_packet`` turn them into CBOR bytes and back. Decoding anything that is not a packet
raises ``ProtocolError`` and nothing else, so a transport can drop a foreign frame with one
``except``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import IntEnum
from typing import Any

from .errors import ProtocolError
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
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in fields(cls))
        _FIELD_NAMES[cls] = names
    return names


def _to_plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cls = type(obj)
    for name in _names(cls):
        value = getattr(obj, name)
        if (cls, name) in _NESTED:
            if value is not None:
                out[name] = _to_plain(value)
        elif isinstance(value, IntEnum):
            out[name] = int(value)
        elif value or value is False:
            out[name] = value
    return out


def _from_plain(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(data).__name__}")
    known = _names(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue  # forward compatible: ignore fields we do not know
        nested = _NESTED.get((cls, name))
        enum = _ENUMS.get((cls, name))
        if nested is not None:
            kwargs[name] = None if value is None else _from_plain(nested, value, f"{where}.{name}")
        elif enum is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError(f"{where}.{name}: expected an integer enum, got {value!r}")
            try:
                kwargs[name] = enum(value)
            except ValueError:
                kwargs[name] = value  # unknown CAP number: kept, the engine reports it
        else:
            kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ProtocolError(f"{where}: {exc}") from None
    _check_types(obj, where)
    return obj


_CHECKS: dict[type, tuple[tuple[str, str], ...]] = {}


def _checks(cls: type) -> tuple[tuple[str, str], ...]:
    """``(field, kind)`` per checked field of ``cls``, derived once from the field defaults
    (nested documents and enums are checked where they are decoded)."""
    checks = _CHECKS.get(cls)
    if checks is None:
        out: list[tuple[str, str]] = []
        for f in fields(cls):
            if (cls, f.name) in _NESTED or (cls, f.name) in _ENUMS:
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if isinstance(default, bool):
                kind = "bool"
            elif isinstance(default, (int, float)):
                # annotations are strings here; 1.5 is no step_index
                kind = "int" if f.type == "int" else "number"
            elif isinstance(default, str):
                kind = "str"
            elif isinstance(default, dict):
                kind = "str_map"
            elif isinstance(default, list):
                kind = "str_list"
            else:
                continue
            out.append((f.name, kind))
        checks = _CHECKS[cls] = tuple(out)
    return checks


def _check_types(obj: Any, where: str) -> None:
    """Reject values whose type does not match the field's default (strings, maps, lists)."""
    for name, kind in _checks(type(obj)):
        value = getattr(obj, name)
        if kind == "str":
            ok = type(value) is str or isinstance(value, str)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str_map":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            )
        else:  # str_list
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            raise ProtocolError(f"{where}.{name}: unexpected type {type(value).__name__}")


def encode_packet(packet: BusPacket) -> bytes:
    """Serialize a packet to CBOR bytes."""
    import cbor2

    if not isinstance(packet, BusPacket):
        raise ProtocolError(f"encode_packet: expected a BusPacket, got {type(packet).__name__}")
    body: dict[str, Any] = {
        "trace_id": packet.trace_id,
        "sender_id": packet.sender_id,
        "created_at": format_ts(packet.created_at),
        "protocol_version": packet.protocol_version,
    }
    if packet.payload is not None:
        tag = _PAYLOAD_TAGS.get(type(packet.payload))
        if tag is None:
            raise ProtocolError(
                f"encode_packet: unknown payload type {type(packet.payload).__name__}"
            )
        body[tag] = _to_plain(packet.payload)
    try:
        return cbor2.dumps(body)
    except Exception as exc:
        raise ProtocolError(f"encode_packet: {exc}") from None


def decode_packet(data: bytes) -> BusPacket:
    """Parse CBOR bytes into a packet. Anything malformed raises ``ProtocolError``."""
    import cbor2

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"decode_packet: expected bytes, got {type(data).__name__}")
    try:
        body = cbor2.loads(bytes(data))
    except Exception as exc:
        raise ProtocolError(f"decode_packet: not CBOR: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"decode_packet: expected a map, got {type(body).__name__}")
    try:
        trace_id = body.get("trace_id", "") or ""
        sender_id = body.get("sender_id", "") or ""
        version = body.get("protocol_version", PROTOCOL_VERSION)
        if not isinstance(trace_id, str) or not isinstance(sender_id, str):
            raise ProtocolError("decode_packet: trace_id/sender_id must be strings")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ProtocolError("decode_packet: protocol_version must be an integer")
        try:
            created = parse_ts(body.get("created_at"), field="created_at")
        except ValueError as exc:
            raise ProtocolError(f"decode_packet: {exc}") from None
        payload = None
        tags = [tag for tag in _PAYLOAD_TYPES if tag in body]
        if len(tags) > 1:
            raise ProtocolError(f"decode_packet: more than one payload: {tags}")
        if tags:
            payload = _from_plain(_PAYLOAD_TYPES[tags[0]], body[tags[0]], tags[0])
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
