"""Limits and small helpers the nng bus router and client share.

Both ends size their sockets and frames from the same constants (``max_frame``), check
subjects and buffer sizes the same way, and batch ops into frames with ``take_frame``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from cordtrio.errors import ProtocolError
from cordtrio.protocol import BusPacket, encode_packet

from .frames import Op, encode_frame

DEFAULT_MAX_BUFFER = 1024
MAX_PACKET = 16 * 1024 * 1024
"""Largest encoded packet the bus carries (``publish`` raises ``ProtocolError`` above)."""
BATCH_BYTES = 256 * 1024
"""A frame stops taking more ops once it holds this many bytes of packets."""
WINDOW = 2
"""Unacknowledged frames allowed towards one client pipe (nng queues 2 per pipe)."""
RECV_BATCH = 256
SOCKET_BUFFER = 1024
FRAME_SLACK = 64 * 1024
HEARTBEAT_INTERVAL = 1.0
"""Seconds of silence after which either end of a connection sends a ``ping``."""
LIVENESS_TIMEOUT = 5.0
"""Seconds without a frame after which the router cuts a client off, and a client (until
the router announces its own timeout in ``hello``) drops the connection and redials."""


def max_frame(max_packet: int) -> int:
    """The ``recv_max_size`` both ends use: one packet plus a full batch of others."""
    return max_packet + BATCH_BYTES + FRAME_SLACK

class RecentIds:
    """A bounded set of recently closed pipe ids (frames from them are stale)."""

    def __init__(self, limit: int = 65536) -> None:
        self._order: deque[int] = deque()
        self._ids: set[int] = set()
        self._limit = limit

    def add(self, value: int) -> None:
        if value in self._ids:
            return
        if len(self._order) >= self._limit:
            self._ids.discard(self._order.popleft())
        self._order.append(value)
        self._ids.add(value)

    def __contains__(self, value: object) -> bool:
        return value in self._ids


class Wakeup:
    """A re-armable wake-up for one waiting task (spurious wake-ups are possible)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


def check_max_buffer(subject: str, max_buffer: int | float) -> None:
    if max_buffer != math.inf and (
        not isinstance(max_buffer, int) or isinstance(max_buffer, bool) or max_buffer < 0
    ):
        raise ValueError(f"subscribe {subject!r}: max_buffer must be an int >= 0 or inf")


def check_subject(action: str, subject: object, queue: object = "") -> None:
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"{action}: the subject must be a non-empty string, got {subject!r}")
    if not isinstance(queue, str):
        raise ValueError(f"{action} {subject!r}: the queue must be a string, got {queue!r}")


def encode_for_bus(subject: str, packet: BusPacket, max_packet: int) -> bytes:
    if not isinstance(packet, BusPacket):
        raise ProtocolError(f"publish {subject!r}: expected a BusPacket, "
                            f"got {type(packet).__name__}")
    wire = encode_packet(packet)
    if len(wire) > max_packet:
        raise ProtocolError(f"publish {subject!r}: the packet is {len(wire)} bytes encoded, "
                            f"more than the bus carries ({max_packet})")
    return wire


def take_frame(outbox: deque[Any], first: list[Op] | None = None,
               resolve: Callable[[Any], Op | None] | None = None) -> tuple[bytes, int]:
    """Encode ops from the front of ``outbox`` into one frame of about ``BATCH_BYTES``;
    with the bytes of the packets it took (they no longer wait in the outbox)."""
    ops: list[Op] = first or []
    size = packets = 0
    while outbox and size < BATCH_BYTES:
        op = outbox.popleft()
        if resolve is not None:
            op = resolve(op)
            if op is None:
                continue
        ops.append(op)
        packet = op.get("packet")
        if packet is not None:  # counted as ``Peers.send`` counted it in
            packets += len(packet)
            size += len(packet)
        size += 32
    return encode_frame(ops), packets


def take_counted_frame(outbox: deque[Op], packet_bytes: int) -> tuple[bytes, int]:
    """``take_frame(outbox)`` for an outbox whose ops' packets are ``packet_bytes`` long in
    all (the router's, ``_Peer.outbox_bytes``): when they fit in one frame, every op is
    taken in one call, as ``take_frame`` would take them one by one (tested)."""
    if packet_bytes + 32 * len(outbox) < BATCH_BYTES:
        ops = list(outbox)
        outbox.clear()
        return encode_frame(ops), packet_bytes
    return take_frame(outbox)
