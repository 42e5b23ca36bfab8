"""The wire format between nng bus clients and the router (``docs/bus.md``).

Every nng message is one *frame*: a CBOR array of *op* maps, so a busy connection batches
many ops into one message. Each op has a string ``"op"`` and a few typed fields:

client → router
    ``{"op": "sub", "sid": int, "subject": str, "queue": str, "room": int}``  (answered
    by ``suback``; no ``room``: unbounded)
    ``{"op": "unsub", "sid": int}``
    ``{"op": "room", "sid": int, "n": int}``  (the subscriber has ``n`` more free slots)
    ``{"op": "pub", "pid": int, "subject": str, "packet": bytes}``  (answered by
    ``puback`` once every matching subscriber has been handed the packet)
    ``{"op": "bounce", "subject": str, "queue": str, "packet": bytes}``  (a queue-group
    packet the client can no longer deliver: give it to another member)
    ``{"op": "credit", "conn": int, "n": int}``  (frames received on this connection;
    rides along with other ops, sent alone once ``window`` frames await it)
    ``{"op": "bye", "n": int}``  (answered in kind once every op before it is handled)
    ``{"op": "jobs", "cid": int, "topics": [str], "cap": int}``  (take jobs of these
    topics, at most ``cap`` unacknowledged; answered by ``jobsack``)
    ``{"op": "unjobs", "cid": int}``  (stop: unacknowledged jobs go to other consumers)
    ``{"op": "ack", "cid": int, "jid": str}``  (the job's result is published)
    ``{"op": "ping"}``  (sent after a heartbeat interval of silence)
    ``{"op": "auth", "mac": bytes}``  (with a token, first: HMAC-SHA256(token, nonce +
    conn as 8 big-endian bytes))
    A ``pub`` of a job request on ``sys.job.submit`` also carries ``"jid"`` and
    ``"topic"``, of a job cancel, result or progress ``"jid"``, read from the packet by
    the client, so that the router never decodes packets. A result's ``pub`` from the
    worker that received the job also carries ``"ack": int`` (its consumer's ``cid``): the
    router acknowledges the job once it has handed the result out (no ``ack`` op).

router → client
    ``{"op": "hello", "conn": int, "proto": 1, "window": int, "live": float}``  (first
    frame of every connection: the token credits quote, how many frames may await
    credit, and the liveness timeout; ``"nonce": bytes`` when the router has a token)
    ``{"op": "authok"}`` / ``{"op": "denied"}``  (the proof is good / missing or wrong)
    ``{"op": "suback", "sid": int}``
    ``{"op": "puback", "pid": int}`` (``"error": str`` if the packet was rejected)
    ``{"op": "msg", "sid": int, "packet": bytes}``  (uses one unit of the sid's room)
    ``{"op": "jobsack", "cid": int}``
    ``{"op": "job", "cid": int, "packet": bytes}``  (a job for consumer ``cid``)
    ``{"op": "ping"}``
    ``{"op": "bye", "n": int}``

``packet`` is ``cordtrio.protocol.encode_packet`` output. Anything else on the socket is a
``FrameError``: the receiver logs it and drops that frame (or that op) and carries on.
"""

from __future__ import annotations

from typing import Any

import cbor2

from cordtrio.errors import ProtocolError

PROTO = 1

Op = dict[str, Any]


class FrameError(ProtocolError):
    """A frame or op that is not part of the nng bus protocol."""


def encode_frame(ops: list[Op]) -> bytes:
    return cbor2.dumps(ops)


def decode_frame(data: bytes) -> list[Any]:
    """The ops of a frame (each still to be checked with the ``field`` helpers)."""
    try:
        ops = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many things on garbage; all mean "not ours"
        raise FrameError(f"not CBOR: {exc!r}") from None
    if not isinstance(ops, list):
        raise FrameError(f"expected a CBOR array of ops, got {type(ops).__name__}")
    return ops


def op_name(op: Any) -> str:
    if not isinstance(op, dict):
        raise FrameError(f"expected an op map, got {type(op).__name__}")
    name = op.get("op")
    if not isinstance(name, str):
        raise FrameError(f"op without a string 'op': {_short(op)}")
    return name


def int_field(op: Op, key: str) -> int:
    value = op.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f"{op.get('op')!r} op: {key!r} must be an integer: {_short(op)}")
    return value


def str_field(op: Op, key: str, *, default: str | None = None, empty: bool = True) -> str:
    value = op.get(key, default)
    if not isinstance(value, str) or (not empty and not value):
        raise FrameError(f"{op.get('op')!r} op: {key!r} must be a"
                         f"{'' if empty else ' non-empty'} string: {_short(op)}")
    return value


def bytes_field(op: Op, key: str) -> bytes:
    value = op.get(key)
    if not isinstance(value, bytes):
        raise FrameError(f"{op.get('op')!r} op: {key!r} must be bytes: {_short(op)}")
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe(data: bytes, limit: int = 48) -> str:
    """A short printable description of a frame, for log lines."""
    head = data[:limit].hex()
    return f"{len(data)} bytes: {head}{'...' if len(data) > limit else ''}"


__all__ = [
    "PROTO",
    "FrameError",
    "Op",
    "bytes_field",
    "decode_frame",
    "describe",
    "encode_frame",
    "int_field",
    "op_name",
    "str_field",
]
