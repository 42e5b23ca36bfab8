"""The router's packet delivery: publish to subscribers, room, queue groups.

A publish hands the packet to every plain subscriber (waiting for room where a local one
has none; a remote one without room gets it queued at the router) and to one member of
each queue group (round robin over the members with room; when none has any, it waits
for the first that gets some). Subscribers grant room as they read. A queue-group packet
its member could not take goes back to the group (``bounce``). The subscription table
itself is ``table.py``. See ``docs/bus.md`` (*Flow control and backpressure*).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from cordtrio.errors import ProtocolError
from cordtrio.protocol import BusPacket, decode_packet, encode_packet

from ._io import log
from .inbox import Inbox
from .table import _Group, _Sub, _Table

if TYPE_CHECKING:
    from .router_host import RouterHost
    from .table import _Peer


class Delivery:
    """The subscription table of a router and the delivery of packets through it; local
    subscriptions (an ``Inbox`` in the router's process) and remote ones alike.
    ``blocked``: the remote plain subscriptions with packets waiting for room."""

    def __init__(self, router: RouterHost) -> None:
        self._router = router
        self.table = _Table()
        self._local: set[_Sub] = set()
        self.blocked: set[_Sub] = set()

    # ------------------------------------------------------------------ subscriptions

    def add_local(self, subject: str, queue: str, max_buffer: int | float) -> Inbox:
        inbox = Inbox(max_buffer)
        sub = _Sub(subject, queue, inbox=inbox, room=inbox.initial_room())
        inbox.on_room = partial(self.add_room, sub)
        inbox.on_close = partial(self._local_left, sub)
        self.table.add(sub)
        self._local.add(sub)
        return inbox

    def add_callback(self, subject: str, queue: str, callback: Callable[[BusPacket], None],
                     on_payload: Callable[[Any], None] | None = None) -> _Sub:
        """A ``listen`` subscriber: ``callback`` gets each packet from within the delivery
        (its own decoded copy), with no buffer and no room to wait for; ``on_payload``,
        which does what ``callback`` does with a packet's payload alone, the payload of a
        result or progress packet decoded without a packet built while it is the one
        listener of its subject (``OpHandler._on_pub``, ``hand_payload``)."""
        sub = _Sub(subject, queue, callback=callback, on_payload=on_payload)
        self.table.add(sub)
        self._local.add(sub)
        return sub

    def remove_callback(self, sub: _Sub) -> None:
        self._local.discard(sub)
        self.drop_sub(sub)

    def _local_left(self, sub: _Sub, leftover: list[BusPacket]) -> None:
        self._local.discard(sub)
        self.drop_sub(sub)
        if sub.queue and leftover and not self._router.closed:
            for packet in leftover:
                self.bounce(sub.subject, sub.queue, encode_packet(packet))

    def add_remote(self, peer: _Peer, sid: int, subject: str, queue: str,
                   room: int | None) -> None:
        old = peer.subs.get(sid)
        if old is not None:
            self.drop_sub(old)  # a re-subscription replaces it, room and all
        sub = _Sub(subject, queue, peer=peer, sid=sid, room=room)
        peer.subs[sid] = sub
        self.table.add(sub)
        self._router._conns.send(peer, {"op": "suback", "sid": sid})

    def remove_remote(self, peer: _Peer, sid: int) -> None:
        gone = peer.subs.get(sid)
        if gone is not None:
            self.drop_sub(gone)

    def remote_room(self, peer: _Peer, sid: int, n: int) -> None:
        sub = peer.subs.get(sid)
        if sub is not None:
            self.add_room(sub, n)

    def drop_sub(self, sub: _Sub) -> None:
        if not sub.alive:
            return
        sub.alive = False
        self.table.remove(sub)
        sub.notify()
        peer = sub.peer
        if sub.pending:
            if peer is not None:
                peer.queued_bytes -= sum(map(len, sub.pending))
            sub.pending.clear()
        self.blocked.discard(sub)
        if peer is not None and peer.subs.get(sub.sid) is sub:
            del peer.subs[sub.sid]

    def end_local(self) -> None:
        """The router is closing: its local subscribers read what is buffered, then
        ``EndOfChannel``."""
        for sub in tuple(self._local):
            self.drop_sub(sub)
            if sub.inbox is not None:
                sub.inbox.end()

    # ------------------------------------------------------------------ delivery

    def deliver(self, subject: str, wire: bytes, packet: BusPacket | None = None
                ) -> list[Callable[[], Awaitable[None]]]:
        """Hand the packet to every subscriber with room now (a remote plain subscriber
        without room gets it queued here); return what must wait. ``packet``: ``wire``
        already decoded by the caller, which does not keep it: the first local subscriber
        handed the packet now takes it instead of decoding a copy of its own. A subject
        whose one listener is a ``listen`` callback (``_Table.sole``: the engine's
        results) is that call alone, as the loops below would make it."""
        table = self.table
        sole = table.sole.get(subject)
        if sole is not None:
            self._push(sole, wire, packet)
            return []
        waits: list[Callable[[], Awaitable[None]]] = []
        for listeners in table.match(subject):
            for sub in listeners.plain:
                if not sub.alive:
                    continue
                if sub.peer is not None and (sub.pending or not sub.has_room()):
                    self._hold(sub, wire)
                elif sub.has_room():
                    if self._push(sub, wire, packet):
                        packet = None
                else:
                    waits.append(partial(self._deliver_plain, sub, wire))
            for group in tuple(listeners.groups.values()):
                taker = self._try_group(group, wire, packet)
                if taker is None:
                    waits.append(partial(self._deliver_to_group, group, wire))
                elif taker:
                    packet = None
        return waits

    def _hold(self, sub: _Sub, wire: bytes) -> None:
        """Queue a packet for a remote plain subscriber that has no room: publishers never
        wait for it; a subscriber that stays without room is cut off (``Peers``)."""
        peer = sub.peer
        assert peer is not None
        if peer.doomed or peer.closed:
            return
        if self._router._conns.over_bound(peer, wire):
            return
        if not sub.pending:
            sub.blocked_since = trio.current_time()
            self.blocked.add(sub)
        sub.pending.append(wire)
        peer.queued_bytes += len(wire)

    async def _deliver_plain(self, sub: _Sub, wire: bytes) -> None:
        while sub.alive and not sub.has_room():
            await sub.changed()
        if sub.alive:
            self._push(sub, wire)

    def _try_group(self, group: _Group, wire: bytes, packet: BusPacket | None = None
                   ) -> bool | None:
        """Give the packet to the next member with room; None if none has any. True when
        a local member took ``packet`` (the caller's decoded copy), else False. A group
        that has emptied counts as served (nobody to give it to)."""
        members = group.members
        n = len(members)
        if not n:
            return False
        start = group.turn % n
        for i in range(start, start + n):
            sub = members[i % n]
            if sub.alive and (sub.room is None or sub.room > 0):  # ``has_room``
                group.turn = (i + 1) % n
                return self._push(sub, wire, packet)
        return None

    async def _deliver_to_group(self, group: _Group, wire: bytes) -> None:
        while self._try_group(group, wire) is None:
            await group.changed()

    def _push(self, sub: _Sub, wire: bytes, packet: BusPacket | None = None) -> bool:
        """Hand ``wire`` to ``sub``; True if a local subscriber took ``packet`` (given
        when the caller has decoded ``wire`` and will not use that copy again)."""
        if sub.room is not None:
            sub.room -= 1
        peer = sub.peer
        if peer is not None:
            self._router._conns.send(peer, {"op": "msg", "sid": sub.sid, "packet": wire})
            return False
        taken = packet is not None
        if packet is None:
            try:
                packet = decode_packet(wire)  # each local subscriber gets its own copy
            except ProtocolError as exc:
                self._router.dropped_frames += 1
                log.warning("nng router: dropped a malformed packet for %r: %s",
                            sub.subject, exc)
                if sub.inbox is not None:
                    sub.inbox.arrived()
                    sub.inbox.replenish()
                return False
        if sub.inbox is not None:
            sub.inbox.put(packet)
        elif sub.callback is not None:
            try:
                sub.callback(packet)
            except Exception:
                log.exception("nng router: a bus listener failed on a packet")
        return taken

    def hand_payload(self, sub: _Sub, payload: Any) -> None:
        """``deliver`` of a packet to ``sub``, its subject's one listener (``_Table.sole``),
        as its ``on_payload`` reads it: the packet's ``payload`` alone."""
        try:
            sub.on_payload(payload)  # type: ignore[misc]
        except Exception:
            log.exception("nng router: a bus listener failed on a packet")

    def add_room(self, sub: _Sub, n: int) -> None:
        if sub.room is not None and sub.alive:
            sub.room += n
            if sub.pending:
                peer = sub.peer
                assert peer is not None
                while sub.pending and sub.has_room():
                    wire = sub.pending.popleft()
                    peer.queued_bytes -= len(wire)
                    self._push(sub, wire)
                if sub.pending:
                    sub.blocked_since = trio.current_time()  # it made progress
                else:
                    sub.blocked_since = None
                    self.blocked.discard(sub)
            sub.notify()

    def bounce(self, subject: str, queue: str, wire: bytes) -> None:
        """Re-deliver a queue-group packet its member could not take to the group."""
        group = self.table.group(subject, queue)
        if group is None or self._try_group(group, wire) is not None:
            return
        nursery = self._router._nursery
        assert nursery is not None
        nursery.start_soon(self._deliver_to_group, group, wire)


__all__ = ["Delivery"]
