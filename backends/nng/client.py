"""The nng bus client: a ``Bus`` in a process that dials the router.

One ``pair1`` socket dials the router; nng redials by itself when the connection drops.
Every subscription is registered with the router under a client-chosen id (``sid``) with
the room its ``Inbox`` has; packets arrive as ``msg`` ops, never more than the room
granted, and the inbox grants more (``room`` ops) as its consumer reads. ``publish``
sends the packet and waits for the router's ``puback``, which comes once every subscriber
has been handed the packet. After a reconnection the client registers its subscriptions
again and re-sends the publishes still waiting for their ``puback``. See ``docs/bus.md``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.protocol import BusPacket, decode_packet, encode_packet

from ._common import (
    DEFAULT_MAX_BUFFER,
    MAX_PACKET,
    RECV_BATCH,
    SOCKET_BUFFER,
    WINDOW,
    RecentIds,
    Wakeup,
    check_max_buffer,
    check_subject,
    encode_for_bus,
    max_frame,
    take_frame,
)
from ._io import PipeEvents, TrioSocket, log, ms
from .frames import (
    PROTO,
    FrameError,
    Op,
    bytes_field,
    decode_frame,
    describe,
    int_field,
    op_name,
)
from .inbox import Inbox

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
MAX_IN_FLIGHT = 1024
LEFT_GROUPS = 4096  # group subscriptions remembered after leaving (to bounce stragglers)


@dataclass(eq=False, slots=True)
class _Subscription:
    sid: int
    subject: str
    queue: str
    inbox: Inbox

    def op(self) -> Op:
        """The ``sub`` op, with the room counted afresh (call only when sending it)."""
        op: Op = {"op": "sub", "sid": self.sid, "subject": self.subject, "queue": self.queue}
        room = self.inbox.initial_room()
        if room is not None:
            op["room"] = room
        return op


@dataclass(eq=False, slots=True)
class _Publish:
    subject: str
    wire: bytes
    done: trio.Event = field(default_factory=trio.Event)
    acked: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """An outbox entry resolved when the frame is built: a publish or a room grant."""

    kind: str  # "pub" | "room"
    id: int


class NngBus:
    """A ``Bus`` over a connection to an ``NngRouter``; open it with ``open_nng_bus``.

    ``connected`` tells whether the router is reachable right now; ``connections`` counts
    the connections made so far (it grows on every reconnection); ``dropped_frames`` counts
    malformed frames, ops and packets that were logged and ignored.
    """

    def __init__(self, address: str, sock: pynng.Socket, *, max_in_flight: int = MAX_IN_FLIGHT,
                 max_packet: int = MAX_PACKET) -> None:
        self.address = address
        self._io = TrioSocket(sock)
        self._max_packet = max_packet
        self._ids = itertools.count(1)
        self._subs: dict[int, _Subscription] = {}
        self._subacks: dict[int, trio.Event] = {}
        self._left: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._pubs: dict[int, _Publish] = {}
        self._room_due: dict[int, int] = {}
        self._byes: dict[int, trio.Event] = {}
        self._bounced = 0  # bounces queued so far
        self._in_flight = trio.Semaphore(max_in_flight)
        self._outbox: deque[Op | _Pending] = deque()
        self._wake = Wakeup()
        self._pipe_id: int | None = None
        self._dead = RecentIds()
        self._conn: int | None = None  # the router's token for this connection
        self._frames_in = 0  # frames received on this connection
        self._credit_sent = 0  # the last ``credit`` sent on it
        self._window = WINDOW
        self._connected = trio.Event()
        self._send_scope: trio.CancelScope | None = None
        self._events: PipeEvents | None = None
        self.closed = False
        self.connections = 0
        self.dropped_frames = 0

    # ------------------------------------------------------------------ Bus

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Send ``packet`` through the router; returns once every subscriber has been
        handed it (waiting while one it must reach has no room). While the router is
        unreachable this waits, and re-sends after the reconnection; bound it with a
        cancel scope if that matters."""
        await trio.lowlevel.checkpoint_if_cancelled()
        check_subject("publish", subject)
        wire = encode_for_bus(subject, packet, self._max_packet)
        self._check_open()
        async with self._in_flight:
            self._check_open()
            pid = next(self._ids)
            pub = _Publish(subject, wire)
            self._pubs[pid] = pub
            self._queue(_Pending("pub", pid))
            try:
                await pub.done.wait()
            finally:
                self._pubs.pop(pid, None)
        if pub.error is not None:
            raise ProtocolError(f"publish {subject!r}: the router rejected the packet: "
                                f"{pub.error}")
        if not pub.acked:
            raise trio.ClosedResourceError(f"publish {subject!r}: the nng bus was closed")

    @asynccontextmanager
    async def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int | float = DEFAULT_MAX_BUFFER
    ) -> AsyncIterator[Inbox]:
        """Subscribe for the duration of the block; the router knows the subscription when
        the block starts (this waits for the router if it is unreachable). Leaving the
        block unsubscribes and closes the channel; what a queue-group member had not read
        goes back to the group. Closing the bus ends the channel (``EndOfChannel``)."""
        check_subject("subscribe", subject, queue)
        check_max_buffer(subject, max_buffer)
        self._check_open()
        inbox = Inbox(max_buffer)
        sub = _Subscription(next(self._ids), subject, queue, inbox)
        inbox.on_room = partial(self._grant_room, sub.sid)
        inbox.on_close = partial(self._unsubscribe, sub)
        acked = trio.Event()
        self._subs[sub.sid] = sub
        self._subacks[sub.sid] = acked
        self._queue(sub.op())
        try:
            await acked.wait()
            self._check_open()
            yield inbox
        finally:
            inbox.close()

    def _unsubscribe(self, sub: _Subscription, leftover: list[BusPacket]) -> None:
        """The subscriber closed its channel (or left its block)."""
        self._subacks.pop(sub.sid, None)
        self._room_due.pop(sub.sid, None)
        if self._subs.pop(sub.sid, None) is None or self.closed:
            return
        if self._pipe_id is not None:
            self._queue({"op": "unsub", "sid": sub.sid})
        if sub.queue:
            self._left[sub.sid] = (sub.subject, sub.queue)
            if len(self._left) > LEFT_GROUPS:
                self._left.popitem(last=False)
            for packet in leftover:
                self._bounce(sub.subject, sub.queue, encode_packet(packet))

    def _bounce(self, subject: str, queue: str, wire: bytes) -> None:
        self._bounced += 1
        self._queue({"op": "bounce", "subject": subject, "queue": queue, "packet": wire})

    def _grant_room(self, sid: int, n: int) -> None:
        if sid not in self._subs:
            return
        if sid not in self._room_due:
            self._room_due[sid] = 0
            self._queue(_Pending("room", sid))
        self._room_due[sid] += n

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._pipe_id is not None

    async def wait_connected(self) -> None:
        """Return once connected to the router."""
        while self._pipe_id is None and not self.closed:
            await self._connected.wait()

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the nng bus is closed")

    def _queue(self, item: Op | _Pending) -> None:
        self._outbox.append(item)
        self._wake.set()

    # ------------------------------------------------------------------ connection

    def _pipe_added(self, pipe: pynng.Pipe) -> None:
        pipe_id = pipe.id
        if self.closed or pipe_id in self._dead or pipe_id == self._pipe_id:
            return
        if self._pipe_id is not None:
            self._pipe_removed(self._pipe_id)
        self._pipe_id = pipe_id
        self.connections += 1
        self._conn = None
        self._frames_in = 0
        self._credit_sent = 0
        # Rebuild the outbox from the state: subscriptions (with fresh room), then the
        # publishes still unconfirmed, then packets bounced back to their groups.
        bounces = [op for op in self._outbox if isinstance(op, dict) and op["op"] == "bounce"]
        self._outbox.clear()
        self._room_due.clear()
        self._outbox.extend(sub.op() for sub in self._subs.values())
        self._outbox.extend(_Pending("pub", pid) for pid in sorted(self._pubs))
        self._outbox.extend(bounces)
        self._connected.set()
        self._wake.set()
        if self.connections > 1:
            log.info("nng bus: reconnected to %s (%d subscriptions, %d publishes re-sent)",
                     self.address, len(self._subs), len(self._pubs))

    def _pipe_removed(self, pipe_id: int) -> None:
        self._dead.add(pipe_id)
        if pipe_id != self._pipe_id:
            return
        self._pipe_id = None
        self._conn = None
        self._connected = trio.Event()
        if self._send_scope is not None:
            self._send_scope.cancel()
        for done in self._byes.values():  # nobody is going to answer those
            done.set()
        if not self.closed:
            log.warning("nng bus: lost the connection to %s; redialling", self.address)

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        await self._io.receive_forever(self._on_message, "nng bus", RECV_BATCH)

    def _on_message(self, msg: pynng.Message) -> None:
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in self._dead:
            return
        if pipe_id != self._pipe_id:
            self._pipe_added(pipe)  # the frame overtook the connect event
        self._frames_in += 1
        if self._frames_in - self._credit_sent >= self._window:
            self._wake.set()  # the router may be waiting for credit: send it on its own
        data = msg.bytes
        try:
            ops = decode_frame(data)
        except FrameError as exc:
            self._garbage(f"frame ({describe(data)})", exc)
            return
        for op in ops:
            try:
                self._on_op(op)
            except FrameError as exc:
                self._garbage("op", exc)

    def _garbage(self, what: str, exc: Exception) -> None:
        self.dropped_frames += 1
        log.warning("nng bus: dropped a malformed %s from %s: %s", what, self.address, exc)

    def _on_op(self, op: Any) -> None:
        name = op_name(op)
        if name == "msg":
            self._deliver(int_field(op, "sid"), bytes_field(op, "packet"))
        elif name == "puback":
            pub = self._pubs.get(int_field(op, "pid"))
            if pub is not None:
                error = op.get("error")
                pub.error = error if isinstance(error, str) else None
                pub.acked = True
                pub.done.set()
        elif name == "suback":
            acked = self._subacks.get(int_field(op, "sid"))
            if acked is not None:
                acked.set()
        elif name == "bye":
            done = self._byes.get(int_field(op, "n"))
            if done is not None:
                done.set()
        elif name == "hello":
            self._conn = int_field(op, "conn")
            window = op.get("window")
            self._window = window if isinstance(window, int) and window > 0 else WINDOW
            if op.get("proto") != PROTO:
                log.warning("nng bus: router at %s speaks protocol %r, this client %d",
                            self.address, op.get("proto"), PROTO)
        else:
            raise FrameError(f"unknown op {name!r}")

    def _deliver(self, sid: int, wire: bytes) -> None:
        sub = self._subs.get(sid)
        if sub is None:  # left meanwhile: a queue group's packet goes back to the group
            left = self._left.get(sid)
            if left is not None:
                self._bounce(*left, wire)
            return
        try:
            packet = decode_packet(wire)
        except ProtocolError as exc:
            self._garbage(f"packet for {sub.subject!r}", exc)
            sub.inbox.arrived()
            sub.inbox.replenish()
            return
        sub.inbox.put(packet)

    # ------------------------------------------------------------------ sending

    def _resolve(self, item: Op | _Pending) -> Op | None:
        if isinstance(item, dict):
            return item
        if item.kind == "pub":
            pub = self._pubs.get(item.id)
            if pub is None:
                return None  # given up (cancelled) before it was sent
            return {"op": "pub", "pid": item.id, "subject": pub.subject, "packet": pub.wire}
        room = self._room_due.pop(item.id, 0)
        return {"op": "room", "sid": item.id, "n": room} if room else None

    async def _writer_loop(self) -> None:
        while True:
            # Credit rides along with every frame; on its own only when the router may
            # have run out of it (``window`` frames received since the last credit).
            owed = self._frames_in - self._credit_sent if self._conn is not None else 0
            if self._pipe_id is None or not (self._outbox or owed >= self._window):
                await self._wake.wait()
                continue
            first: list[Op] = []
            if owed:
                first.append({"op": "credit", "conn": self._conn, "n": self._frames_in})
                self._credit_sent = self._frames_in
            frame = take_frame(self._outbox, first, self._resolve)
            with trio.CancelScope() as scope:
                self._send_scope = scope
                try:
                    await self._io.send(pynng.Message(frame))
                except pynng.NNGException as exc:
                    log.warning("nng bus: sending to %s failed: %s", self.address, exc)
            self._send_scope = None

    # ------------------------------------------------------------------ lifecycle

    async def _goodbye(self, timeout: float) -> None:
        """Leave cleanly: unsubscribe everything, then make sure the router has taken
        every op sent (bounced queue-group packets above all) before the socket closes.
        A packet the router had already sent for a left group subscription arrives
        before the router's ``bye`` answer and is bounced, so repeat until none was."""
        if self.closed or not self.connected:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            for sid in self._subs:
                self._queue({"op": "unsub", "sid": sid})
            while self.connected:
                bounced = self._bounced
                n = next(self._ids)
                done = self._byes[n] = trio.Event()
                self._queue({"op": "bye", "n": n})
                try:
                    await done.wait()
                finally:
                    del self._byes[n]
                if self._bounced == bounced or not self.connected:
                    return

    def _start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._receive_loop)
        nursery.start_soon(self._writer_loop)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        for pub in self._pubs.values():
            pub.done.set()
        for acked in self._subacks.values():
            acked.set()
        for sub in self._subs.values():
            sub.inbox.end()
        self._connected.set()
        self._io.close()


@asynccontextmanager
async def open_nng_bus(
    address: str,
    *,
    connect_timeout: float | None = CONNECT_TIMEOUT,
    reconnect_min: float = 0.1,
    reconnect_max: float = 2.0,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_packet: int = MAX_PACKET,
    close_timeout: float = CLOSE_TIMEOUT,
) -> AsyncIterator[NngBus]:
    """Dial the router at ``address`` and yield a ``Bus`` for this process.

    Waits up to ``connect_timeout`` seconds for the first connection and raises
    ``CordtrioError`` naming the address if there is none (``None``: don't wait; publishes
    and subscribes wait instead). A lost connection is redialled after ``reconnect_min``
    seconds, backing off to ``reconnect_max``. At most ``max_in_flight`` publishes wait
    for the router at once (more wait for a slot). Leaving the block unsubscribes, waits
    up to ``close_timeout`` seconds for the router to have taken everything sent (packets
    handed back to queue groups above all), ends subscriber channels (their readers see
    ``EndOfChannel``) and closes the connection.
    """
    try:
        sock = pynng.Pair1(recv_max_size=max_frame(max_packet),
                           recv_buffer_size=SOCKET_BUFFER, send_buffer_size=SOCKET_BUFFER,
                           reconnect_time_min=ms(reconnect_min),
                           reconnect_time_max=ms(reconnect_max))
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng bus: cannot open a socket: {exc}") from exc
    bus = NngBus(address, sock, max_in_flight=max_in_flight, max_packet=max_packet)
    try:
        bus._events = PipeEvents(sock, bus._pipe_added, bus._pipe_removed)
        try:
            sock.dial(address, block=False)
        except pynng.NNGException as exc:
            raise CordtrioError(f"nng bus: cannot dial {address!r}: {exc}") from exc
        async with open_service_nursery() as nursery:
            bus._start(nursery)
            if connect_timeout is not None:
                with trio.move_on_after(connect_timeout):
                    await bus.wait_connected()
                if not bus.connected:
                    raise CordtrioError(f"nng bus: no router answered at {address!r} within "
                                        f"{connect_timeout:g} s")
            try:
                yield bus
            finally:
                await bus._goodbye(close_timeout)
    finally:
        bus._shutdown()


__all__ = ["CLOSE_TIMEOUT", "CONNECT_TIMEOUT", "NngBus", "open_nng_bus"]
