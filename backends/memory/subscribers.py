"""The subscription tables of ``MemoryBus`` and how one published packet reaches them.

``bus.py`` holds the bus's API (publish, subscribe, listen, the job hand-over); this module
holds what sits under ``publish`` for subscribers: the listeners of each subject (exact
and ``>`` wildcards), their queue groups with round-robin turns, the offer of a packet to
everyone with room, and the wait, in turn, for those whose buffers are full (the
backpressure). ``Subscribers`` is ``MemoryBus``'s base class, so these stay methods of the
bus (no extra call on a publish); the bus learns of every (un)subscription through
``_refresh_direct``, to rebuild its fast paths. Split from ``bus.py`` to keep each module
to one responsibility (and under the project's ~500 lines).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from cordtrio.protocol import BusPacket, decode_packet

log = logging.getLogger("cordtrio.bus")

Send = trio.MemorySendChannel[BusPacket]


@dataclass(eq=False, slots=True)
class Group:
    """Queue-group members of one subscription subject; ``turn`` is the next in rotation."""

    members: tuple[Send, ...] = ()
    turn: int = 0


@dataclass(slots=True)
class Listeners:
    """Everyone subscribed under one subscription subject. Tuples are replaced, never
    mutated, so a publish can iterate them across awaits."""

    plain: tuple[Send, ...] = ()
    groups: dict[str, Group] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.plain and not self.groups


@dataclass(slots=True)
class Wait:
    """A listener that had no room for a packet: a plain subscriber (``send``) or a queue
    group (``group``) of subscription ``key`` in ``table``."""

    table: dict[str, Listeners]
    key: str
    queue: str
    group: Group | None
    send: Send | None


class Callback:
    """A ``listen`` subscriber, in the place of a send channel: ``send_nowait`` calls it.
    ``on_payload``, when given, takes a packet's payload alone (see ``MemoryBus.listen``)."""

    __slots__ = ("callback", "on_payload")

    def __init__(self, callback: Callable[[BusPacket], None],
                 on_payload: Callable[[Any], None] | None = None) -> None:
        self.callback = callback
        self.on_payload = on_payload

    def send_nowait(self, packet: BusPacket) -> None:
        try:
            self.callback(packet)
        except Exception:
            log.exception("a bus listener failed on a packet")


class Subscribers:
    """Subscribers of a ``MemoryBus`` by subject, and the delivery of a packet to them.
    ``codec``: each subscriber gets its own copy decoded from the packet's encoding."""

    def __init__(self, codec: bool) -> None:
        self._codec = codec
        self._exact: dict[str, Listeners] = {}
        self._wildcards: dict[str, Listeners] = {}  # prefix before ">" -> listeners

    def _refresh_direct(self) -> None:
        """Called whenever anyone (un)subscribes (``MemoryBus`` rebuilds its fast paths)."""

    def _table_for(self, subject: str) -> tuple[dict[str, Listeners], str]:
        if subject.endswith(">") and (len(subject) == 1 or subject[-2] == "."):
            return self._wildcards, subject[:-1]
        return self._exact, subject

    def _add(self, table: dict[str, Listeners], key: str, queue: str, send: Send) -> None:
        self._add_listener(table, key, queue, send)
        self._refresh_direct()

    def _remove(self, table: dict[str, Listeners], key: str, queue: str, send: Send) -> None:
        self._remove_listener(table, key, queue, send)
        self._refresh_direct()

    @staticmethod
    def _add_listener(table: dict[str, Listeners], key: str, queue: str, send: Send
                      ) -> None:
        listeners = table.setdefault(key, Listeners())
        if queue:
            group = listeners.groups.setdefault(queue, Group())
            group.members = (*group.members, send)
        else:
            listeners.plain = (*listeners.plain, send)

    @staticmethod
    def _remove_listener(table: dict[str, Listeners], key: str, queue: str, send: Send
                         ) -> None:
        listeners = table.get(key)
        if listeners is None:
            return
        if queue:
            group = listeners.groups.get(queue)
            if group is not None:
                group.members = tuple(m for m in group.members if m is not send)
                if not group.members:
                    del listeners.groups[queue]
        else:
            listeners.plain = tuple(m for m in listeners.plain if m is not send)
        if listeners.empty() and table.get(key) is listeners:
            del table[key]

    def _copy(self, packet: BusPacket, wire: bytes | None) -> BusPacket:
        return packet if wire is None else decode_packet(wire)

    def _offer(
        self,
        key: str,
        listeners: Listeners,
        packet: BusPacket,
        wire: bytes | None,
        table: dict[str, Listeners],
        waits: list[Wait],
    ) -> None:
        """Deliver to every listener of one set that has room (and to one member of each
        queue group); add those whose buffers are full to ``waits``."""
        for send in listeners.plain:
            try:
                send.send_nowait(self._copy(packet, wire))
            except trio.WouldBlock:
                waits.append(Wait(table, key, "", None, send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove(table, key, "", send)
        if listeners.groups:
            for queue, group in tuple(listeners.groups.items()):
                if not self._offer_to_group(key, queue, group, packet, wire, table):
                    waits.append(Wait(table, key, queue, group, None))

    def _offer_to_group(
        self,
        key: str,
        queue: str,
        group: Group,
        packet: BusPacket,
        wire: bytes | None,
        table: dict[str, Listeners],
    ) -> bool:
        """Hand the packet to the first member with room, starting at the one whose turn
        it is: True when one took it (or the group has emptied), False when all are full."""
        members = group.members
        if len(members) == 1:  # the usual group (one engine's result consumer): no turns
            try:
                members[0].send_nowait(self._copy(packet, wire))
                group.turn = 0
                return True
            except trio.WouldBlock:
                return False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove(table, key, queue, members[0])
        while group.members:
            members = group.members
            n = len(members)
            start = group.turn % n
            for i in range(n):
                send = members[(start + i) % n]
                try:
                    send.send_nowait(self._copy(packet, wire))
                except trio.WouldBlock:
                    continue
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._remove(table, key, queue, send)
                    continue
                group.turn = (start + i + 1) % n
                return True
            if group.members is members:
                return False
            # dead members were dropped: try the survivors again
        return True

    async def _wait_for_room(self, waits: list[Wait], packet: BusPacket,
                             wire: bytes | None) -> None:
        """Wait, in turn, until each full listener takes the packet (a queue group: the
        member whose turn it is, unless another one has room by then)."""
        for w in waits:
            if w.group is None:
                assert w.send is not None
                try:
                    await w.send.send(self._copy(packet, wire))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._remove(w.table, w.key, "", w.send)
                continue
            group = w.group
            while not self._offer_to_group(w.key, w.queue, group, packet, wire, w.table):
                members = group.members
                start = group.turn % len(members)
                send = members[start]
                group.turn = (start + 1) % len(members)
                try:
                    await send.send(self._copy(packet, wire))
                    break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._remove(w.table, w.key, w.queue, send)


__all__ = ["Callback", "Group", "Listeners", "Send", "Subscribers", "Wait"]
