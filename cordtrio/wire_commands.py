"""Run commands as bytes, for the durable per-run command inbox (``ports.RunLeases``).

When several engines share a store, a command or job result for a run another engine owns
is written to that run's inbox in the store and applied by the owner. Only the events that
cross engines are encodable: ``Start``, ``Approve``, ``CancelRun``, ``JobStarted`` and
``ResultReceived``
(its ``JobResult`` travels in the bus protocol's CBOR codec, so a result keeps exactly the
fields the bus gave it; a loaded output does not travel — the owner loads it again).

The format is one CBOR map: ``{"v": 1, "kind": "start" | "approve" | "cancel" | "started" |
"result",
...}``. Anything else decodes to ``ProtocolError`` naming what is wrong.
"""

from __future__ import annotations

from typing import Any

from .core.events import Approve, CancelRun, Event, JobStarted, ResultReceived, Start
from .errors import ProtocolError
from .protocol import BusPacket, JobResult, decode_packet, encode_packet

WIRE_VERSION = 1

RunCommand = Start | Approve | CancelRun | JobStarted | ResultReceived
"""The events a run's inbox carries."""


def is_wire_command(event: Event) -> bool:
    """True when ``event`` can be written to a run's inbox."""
    return isinstance(event, (Start, Approve, CancelRun, JobStarted, ResultReceived))


def encode_command(event: Event) -> bytes:
    """``event`` as inbox bytes; ``ProtocolError`` for an event that does not travel."""
    import cbor2

    body: dict[str, Any] = {"v": WIRE_VERSION}
    if isinstance(event, Start):
        body["kind"] = "start"
    elif isinstance(event, Approve):
        body.update(kind="approve", step_id=event.step_id, approved=bool(event.approved))
    elif isinstance(event, CancelRun):
        body.update(kind="cancel", reason=event.reason)
    elif isinstance(event, JobStarted):
        body.update(kind="started", job_id=event.job_id)
    elif isinstance(event, ResultReceived):
        body.update(kind="result", packet=encode_packet(BusPacket(payload=event.result)))
    else:
        raise ProtocolError(f"run command: {type(event).__name__} cannot be queued")
    return bytes(cbor2.dumps(body))


def decode_command(data: bytes) -> RunCommand:
    """Inbox bytes back to the event; ``ProtocolError`` for anything malformed."""
    import cbor2

    try:
        body = cbor2.loads(bytes(data))
    except Exception as exc:
        raise ProtocolError(f"run command: not CBOR: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"run command: expected a map, got {type(body).__name__}")
    if body.get("v") != WIRE_VERSION:
        raise ProtocolError(f"run command: unknown version {body.get('v')!r}")
    kind = body.get("kind")
    if kind == "start":
        return Start()
    if kind == "approve":
        step_id, approved = body.get("step_id"), body.get("approved", True)
        if not isinstance(step_id, str) or not isinstance(approved, bool):
            raise ProtocolError("run command approve: step_id must be a string, approved a bool")
        return Approve(step_id, approved)
    if kind == "cancel":
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise ProtocolError("run command cancel: reason must be a string")
        return CancelRun(reason) if reason else CancelRun()
    if kind == "started":
        job_id = body.get("job_id")
        if not isinstance(job_id, str):
            raise ProtocolError("run command started: job_id must be a string")
        return JobStarted(job_id)
    if kind == "result":
        packet = body.get("packet")
        if not isinstance(packet, bytes):
            raise ProtocolError("run command result: packet must be bytes")
        result = decode_packet(packet).payload
        if not isinstance(result, JobResult):
            raise ProtocolError("run command result: the packet holds no job_result")
        return ResultReceived(result)
    raise ProtocolError(f"run command: unknown kind {kind!r}")


__all__ = ["RunCommand", "decode_command", "encode_command", "is_wire_command"]
