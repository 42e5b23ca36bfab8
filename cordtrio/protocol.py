"""Bus messages (mirroring cordum's CAP protocol) and their CBOR wire codec.

Packets are plain dataclasses (with ``slots``: the engine builds a ``JobRequest`` and reads a
``JobResult`` per step, and slotted fields are cheaper to set and read); ``encode_packet``/
``decode_packet`` turn them into CBOR bytes and back (the envelope here, each payload's
fields by ``codec_fields``). Decoding anything that is not a packet raises
``ProtocolError`` and nothing else, so a transport can drop a foreign frame with one
``except``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from operator import itemgetter
from typing import Any, Literal, overload

import cbor2

from .codec_fields import payload_plan, register_fields
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
register_fields(_NESTED, _ENUMS)


class _Encoders(dict[type, tuple[str, Callable[[Any], dict[str, Any]]] | None]):
    """Per payload class: its tag and its ``_to_plain`` (``encode_packet``: one lookup);
    None for any other class. Filled as classes are met (a codec is compiled once used)."""

    def __missing__(self, cls: type) -> tuple[str, Callable[[Any], dict[str, Any]]] | None:
        tag = _PAYLOAD_TAGS.get(cls)
        if tag is None:
            return None
        coded = self[cls] = (tag, payload_plan(cls).encode)
        return coded


class _Decoders(dict[str, Callable[[Any, str], Any]]):
    """Per payload tag: its class's ``_from_plain`` (``decode_packet``: one lookup)."""

    def __missing__(self, tag: str) -> Callable[[Any, str], Any]:
        decode = self[tag] = payload_plan(_PAYLOAD_TYPES[tag]).decode
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
