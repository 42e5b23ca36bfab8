"""The nng bus router: one listening ``pair1`` (polyamorous) socket, every client a pipe.

The router owns the subscription table: plain subscribers and queue groups per subject,
as ``MemoryBus`` keeps them, except that a member is a *remote* subscription (a client
pipe plus the client's subscription id) or a *local* one (an ``Inbox`` in this process:
the router is itself a ``Bus``). Every subscription has *room*: how many more packets its
subscriber's bounded buffer can take, granted by the subscriber as it reads. A publish
hands the packet to every plain subscriber (waiting for room where there is none) and to
one member of each queue group (round robin over the members with room; when none has
any, it waits for the first that gets some). The publisher hears back (``puback``) when
every subscriber has been handed the packet, which is what makes ``publish`` wait for
slow consumers.

nng's polyamorous pair drops a message when a pipe's small send queue is full, so the
router never has more than ``WINDOW`` unacknowledged frames towards one pipe: clients
return ``credit`` for the frames they receive, and everything waiting for a pipe is
batched into its next frame. See ``docs/bus.md``.

The table and connection records live in ``table.py``, the limits and helpers shared with
the client in ``_common.py``; their names are re-exported here for existing imports.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.protocol import BusPacket, decode_packet, encode_packet
from cordtrio.ratelog import rate_limited

from ._common import BATCH_BYTES as BATCH_BYTES
from ._common import DEFAULT_MAX_BUFFER as DEFAULT_MAX_BUFFER
from ._common import FRAME_SLACK as FRAME_SLACK
from ._common import MAX_PACKET as MAX_PACKET
from ._common import RECV_BATCH as RECV_BATCH
from ._common import SOCKET_BUFFER as SOCKET_BUFFER
from ._common import WINDOW as WINDOW
from ._common import RecentIds as RecentIds
from ._common import Wakeup as Wakeup
from ._common import check_max_buffer as check_max_buffer
from ._common import check_subject as check_subject
from ._common import encode_for_bus as encode_for_bus
from ._common import max_frame as max_frame
from ._common import take_frame as take_frame
from ._io import PipeEvents, ThreadedSender, log
from .frames import (
    PROTO,
    FrameError,
    Op,
    bytes_field,
    decode_frame,
    describe,
    int_field,
    op_name,
    str_field,
)
from .inbox import Inbox
from .table import _Group as _Group
from .table import _Listeners as _Listeners
from .table import _Peer as _Peer
from .table import _Sub as _Sub
from .table import _Table as _Table
from .table import split_subject as split_subject

# ------------------------------------------------------------------------ the router


class NngRouter:
    """The hub of an nng bus, and a ``Bus`` for the process hosting it.

    Open it with ``open_nng_router``. ``urls`` are the addresses it listens on (a
    ``tcp://host:0`` address is reported with the port nng picked). ``peer_count``,
    ``subscription_count`` and ``dropped_frames`` are there for monitoring and tests.
    """

    def __init__(self, sock: pynng.Socket, *, max_packet: int = MAX_PACKET) -> None:
        self._io = ThreadedSender(sock)
        self._max_packet = max_packet
        self._table = _Table()
        self._peers: dict[int, _Peer] = {}
        self._dead = RecentIds()
        self._ready: deque[_Peer] = deque()
        self._wake = Wakeup()
        self._local: set[_Sub] = set()
        self._nursery: trio.Nursery | None = None
        self._events: PipeEvents | None = None
        self.closed = False
        self.urls: list[str] = []
        self.dropped_frames = 0

    # ------------------------------------------------------------------ Bus (local)

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Hand ``packet`` to every matching subscriber, local or remote; waits while a
        subscriber it must reach has no room (like ``MemoryBus``)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        check_subject("publish", subject)
        wire = encode_for_bus(subject, packet, self._max_packet)
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        for wait in self._deliver(subject, wire):
            await wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    @asynccontextmanager
    async def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int | float = DEFAULT_MAX_BUFFER
    ) -> AsyncIterator[Inbox]:
        """Subscribe in this process for the duration of the block (see ``MemoryBus``).
        Leaving a queue group hands what the subscriber had not read to the others."""
        check_subject("subscribe", subject, queue)
        check_max_buffer(subject, max_buffer)
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        inbox = Inbox(max_buffer)
        sub = _Sub(subject, queue, inbox=inbox, room=inbox.initial_room())
        inbox.on_room = partial(self._add_room, sub)
        inbox.on_close = partial(self._local_left, sub)
        self._table.add(sub)
        self._local.add(sub)
        try:
            yield inbox
        finally:
            inbox.close()

    def _local_left(self, sub: _Sub, leftover: list[BusPacket]) -> None:
        self._local.discard(sub)
        self._drop_sub(sub)
        if sub.queue and leftover and not self.closed:
            for packet in leftover:
                self._bounce(sub.subject, sub.queue, encode_packet(packet))

    # ------------------------------------------------------------------ monitoring

    @property
    def peer_count(self) -> int:
        """Connected clients."""
        return len(self._peers)

    @property
    def subscription_count(self) -> int:
        """Subscriptions known to the router, local and remote."""
        return self._table.count()

    # ------------------------------------------------------------------ delivery

    def _deliver(self, subject: str, wire: bytes) -> list[Callable[[], Awaitable[None]]]:
        """Hand the packet to every subscriber with room now; return what must wait."""
        waits: list[Callable[[], Awaitable[None]]] = []
        for listeners in self._table.match(subject):
            for sub in listeners.plain:
                if not sub.alive:
                    continue
                if sub.has_room():
                    self._push(sub, wire)
                else:
                    waits.append(partial(self._deliver_plain, sub, wire))
            for group in tuple(listeners.groups.values()):
                if not self._try_group(group, wire):
                    waits.append(partial(self._deliver_to_group, group, wire))
        return waits

    async def _deliver_plain(self, sub: _Sub, wire: bytes) -> None:
        while sub.alive and not sub.has_room():
            await sub.changed()
        if sub.alive:
            self._push(sub, wire)

    def _try_group(self, group: _Group, wire: bytes) -> bool:
        """Give the packet to the next member with room; False if none has any. A group
        that has emptied counts as served (nobody to give it to)."""
        members = group.members
        n = len(members)
        if not n:
            return True
        start = group.turn % n
        for i in range(n):
            sub = members[(start + i) % n]
            if sub.alive and sub.has_room():
                group.turn = (start + i + 1) % n
                self._push(sub, wire)
                return True
        return False

    async def _deliver_to_group(self, group: _Group, wire: bytes) -> None:
        while not self._try_group(group, wire):
            await group.changed()

    def _push(self, sub: _Sub, wire: bytes) -> None:
        if sub.room is not None:
            sub.room -= 1
        if sub.inbox is not None:
            try:
                packet = decode_packet(wire)  # each local subscriber gets its own copy
            except ProtocolError as exc:
                sub.inbox.arrived()
                self.dropped_frames += 1
                log.warning("nng router: dropped a malformed packet for %r: %s",
                            sub.subject, exc)
                sub.inbox.replenish()
                return
            sub.inbox.put(packet)
        elif sub.peer is not None:
            self._send(sub.peer, {"op": "msg", "sid": sub.sid, "packet": wire})

    def _add_room(self, sub: _Sub, n: int) -> None:
        if sub.room is not None and sub.alive:
            sub.room += n
            sub.notify()

    def _drop_sub(self, sub: _Sub) -> None:
        if not sub.alive:
            return
        sub.alive = False
        self._table.remove(sub)
        sub.notify()
        peer = sub.peer
        if peer is not None and peer.subs.get(sub.sid) is sub:
            del peer.subs[sub.sid]

    def _bounce(self, subject: str, queue: str, wire: bytes) -> None:
        """Re-deliver a queue-group packet its member could not take to the group."""
        group = self._table.group(subject, queue)
        if group is None or self._try_group(group, wire):
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._deliver_to_group, group, wire)

    # ------------------------------------------------------------------ peers

    def _send(self, peer: _Peer, op: Op) -> None:
        if peer.closed:
            return
        peer.outbox.append(op)
        self._kick(peer)

    def _kick(self, peer: _Peer) -> None:
        if not peer.queued and peer.can_send():
            peer.queued = True
            self._ready.append(peer)
            self._wake.set()

    def _open_peer(self, pipe: pynng.Pipe, pipe_id: int) -> _Peer:
        peer = _Peer(pipe, pipe_id, secrets.randbits(62))
        self._peers[pipe_id] = peer
        self._send(peer, {"op": "hello", "conn": peer.token, "proto": PROTO,
                          "window": WINDOW})
        log.debug("nng router: client pipe %d connected", pipe_id)
        return peer

    def _close_peer(self, peer: _Peer) -> None:
        peer.closed = True
        peer.outbox.clear()
        for sub in tuple(peer.subs.values()):
            self._drop_sub(sub)
        log.debug("nng router: client pipe %d gone", peer.id)

    def _pipe_added(self, pipe: pynng.Pipe) -> None:
        pipe_id = pipe.id
        if self.closed or pipe_id in self._dead or pipe_id in self._peers:
            return
        self._open_peer(pipe, pipe_id)

    def _pipe_removed(self, pipe_id: int) -> None:
        self._dead.add(pipe_id)
        peer = self._peers.pop(pipe_id, None)
        if peer is not None:
            self._close_peer(peer)

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        await self._io.receive_forever(self._on_message, "nng router", RECV_BATCH)

    def _on_message(self, msg: pynng.Message) -> None:
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in self._dead:
            return  # from a connection that is already gone
        peer = self._peers.get(pipe_id) or self._open_peer(pipe, pipe_id)
        data = msg.bytes
        try:
            ops = decode_frame(data)
        except FrameError as exc:
            self._garbage(peer, f"frame ({describe(data)})", exc)
            return
        for op in ops:
            try:
                self._on_op(peer, op)
            except FrameError as exc:
                self._garbage(peer, "op", exc)

    def _garbage(self, peer: _Peer, what: str, exc: Exception) -> None:
        self.dropped_frames += 1
        rate_limited(log).warning(f"{id(self)} {what}", "nng router: dropped a malformed %s "
                                  "from pipe %d: %s", what, peer.id, exc)

    def _on_op(self, peer: _Peer, op: Any) -> None:
        name = op_name(op)
        if name == "pub":
            pid = int_field(op, "pid")
            subject = str_field(op, "subject", empty=False)
            wire = packet_field(op)
            waits = self._deliver(subject, wire)
            if waits:
                assert self._nursery is not None
                self._nursery.start_soon(self._finish_publish, peer, pid, waits)
            else:
                self._send(peer, {"op": "puback", "pid": pid})
        elif name == "room":
            sub = peer.subs.get(int_field(op, "sid"))
            n = int_field(op, "n")
            if n < 0:
                raise FrameError(f"'room' op: negative room {n}")
            if sub is not None:
                self._add_room(sub, n)
        elif name == "credit":
            conn = int_field(op, "conn")
            received = int_field(op, "n")
            if conn == peer.token and received > peer.credited:
                peer.credited = min(received, peer.sent)
                self._kick(peer)
        elif name == "sub":
            sid = int_field(op, "sid")
            subject = str_field(op, "subject", empty=False)
            queue = str_field(op, "queue", default="")
            room = op.get("room")
            if room is not None and (not isinstance(room, int) or isinstance(room, bool)
                                     or room < 0):
                raise FrameError(f"'sub' op: 'room' must be an integer >= 0: {room!r}")
            old = peer.subs.get(sid)
            if old is not None:
                self._drop_sub(old)  # a re-subscription replaces it, room and all
            sub = _Sub(subject, queue, peer=peer, sid=sid, room=room)
            peer.subs[sid] = sub
            self._table.add(sub)
            self._send(peer, {"op": "suback", "sid": sid})
        elif name == "unsub":
            gone = peer.subs.get(int_field(op, "sid"))
            if gone is not None:
                self._drop_sub(gone)
        elif name == "bye":  # answered after every op before it: the client may go
            self._send(peer, {"op": "bye", "n": int_field(op, "n")})
        elif name == "bounce":
            subject = str_field(op, "subject", empty=False)
            queue = str_field(op, "queue", empty=False)
            self._bounce(subject, queue, packet_field(op))
        else:
            raise FrameError(f"unknown op {name!r}")

    async def _finish_publish(
        self, peer: _Peer, pid: int, waits: list[Callable[[], Awaitable[None]]]
    ) -> None:
        for wait in waits:
            await wait()
        self._send(peer, {"op": "puback", "pid": pid})

    # ------------------------------------------------------------------ sending

    async def _writer_loop(self) -> None:
        while True:
            if not self._ready:
                await self._wake.wait()
                continue
            peer = self._ready.popleft()
            peer.queued = False
            if not peer.can_send():
                continue
            frame = take_frame(peer.outbox)
            peer.sent += 1
            try:
                await self._io.send(pynng.Message(frame, peer.pipe))
            except pynng.NNGException as exc:
                log.warning("nng router: sending to pipe %d failed: %s", peer.id, exc)
            self._kick(peer)

    # ------------------------------------------------------------------ lifecycle

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._receive_loop)
        nursery.start_soon(self._writer_loop)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        for peer in tuple(self._peers.values()):
            self._close_peer(peer)
        self._peers.clear()
        for sub in tuple(self._local):
            self._drop_sub(sub)
            if sub.inbox is not None:
                sub.inbox.end()
        self._io.close()


def packet_field(op: Op) -> bytes:
    """A packet's bytes, checked to be a CBOR map (fully decoded only by subscribers)."""
    wire = bytes_field(op, "packet")
    if not wire or not 0xA0 <= wire[0] <= 0xBF:
        raise FrameError(f"{op.get('op')!r} op: the packet is not a CBOR map "
                         f"({describe(wire)})")
    return wire


def resolved_url(address: str, listener: pynng.Listener) -> str:
    """``tcp://host:0`` → the address with the port nng bound; others unchanged."""
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("tcp", "tcp4") and rest.endswith(":0"):
        try:
            return f"{scheme}://{listener.local_address}"
        except Exception:  # pragma: no cover - an exotic address family
            return address
    return address


@asynccontextmanager
async def open_nng_router(
    *addresses: str, max_packet: int = MAX_PACKET
) -> AsyncIterator[NngRouter]:
    """Listen on ``addresses`` (``ipc://path``, ``tcp://host:port``...) for bus clients and
    yield the router, which is also a ``Bus`` for this process. Leaving the block closes
    every client connection (clients keep redialling until a router is back) and ends
    the local subscribers' channels."""
    if not addresses:
        raise ValueError("open_nng_router: give at least one address to listen on")
    try:
        sock = pynng.Pair1(polyamorous=True, recv_max_size=max_frame(max_packet),
                           recv_buffer_size=SOCKET_BUFFER, send_buffer_size=SOCKET_BUFFER)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng router: cannot open a socket: {exc}") from exc
    router = NngRouter(sock, max_packet=max_packet)
    try:
        router._events = PipeEvents(sock, router._pipe_added, router._pipe_removed)
        for address in addresses:
            try:
                listener = sock.listen(address)
            except pynng.NNGException as exc:
                raise CordtrioError(f"nng router: cannot listen on {address!r}: {exc}") from exc
            router.urls.append(resolved_url(address, listener))
        async with open_service_nursery() as nursery:
            router._start(nursery)
            yield router
    finally:
        router._shutdown()


__all__ = ["MAX_PACKET", "NngRouter", "open_nng_router"]
