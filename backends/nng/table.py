"""The router's records: its client connections, subscription table and queue groups.

A client connection (an nng pipe) is a ``_Peer``: its outbox and send window, its
subscriptions and job consumers, when it was last heard, whether it is authenticated or
about to be cut off; ``router_peers.py`` keeps them.

A member of the table is a *remote* subscription (a client pipe plus the client's
subscription id) or a *local* one (an ``Inbox`` in the router's process). Every
subscription has *room*: how many more packets its subscriber's bounded buffer can take.
Subjects map to plain subscribers and queue groups, with ``>`` wildcards, as in
``MemoryBus``. The delivery logic that uses this state lives in ``router_delivery.py``,
the client connections' upkeep in ``router_peers.py``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynng
import trio

from ._common import WINDOW
from .frames import Op
from .inbox import Inbox

if TYPE_CHECKING:
    from cordtrio.protocol import BusPacket

    from ..job_queues import Consumer


class _Peer:
    """One client connection (an nng pipe)."""

    def __init__(self, pipe: pynng.Pipe, pipe_id: int, token: int, now: float) -> None:
        self.pipe = pipe
        self.id = pipe_id
        self.token = token  # sent in "hello"; credits must quote it
        self.outbox: deque[Op] = deque()
        self.sent = 0  # frames handed to nng
        self.credited = 0  # frames the client says it received
        self.subs: dict[int, _Sub] = {}
        self.consumers: dict[int, Consumer] = {}  # job consumers, by the client's id
        self.closed = False
        self.queued = False  # in the router's ready queue
        self.last_heard = now  # Trio clock: the last frame from the client
        self.last_sent = now  # the last frame handed to nng for it
        self.queued_bytes = 0  # packet bytes waiting for it (outbox and pending)
        self.outbox_bytes = 0  # the packet bytes of the ops in ``outbox``
        self.doomed = ""  # why it is about to be cut off (nothing more is queued for it)
        self.authed = True  # proved it holds the token (always, on a router without one)
        self.nonce = b""  # the challenge of its hello, with a token

    def can_send(self) -> bool:
        return bool(self.outbox) and not self.closed and self.sent - self.credited < WINDOW


def remote_address(pipe: pynng.Pipe) -> str:
    try:
        return str(pipe.remote_address)
    except Exception:
        return "?"


class Changes:
    """Wakes every task waiting at the moment of ``notify`` (a notify with nobody waiting is
    forgotten): publishes waiting for room in a subscription or a queue group."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


@dataclass(eq=False, slots=True)
class _Group:
    members: tuple[_Sub, ...] = ()
    turn: int = 0
    changes: Changes = field(default_factory=Changes)

    async def changed(self) -> None:
        """Wait until a member gets room, joins or leaves."""
        await self.changes.wait()

    def notify(self) -> None:
        self.changes.notify()


@dataclass(eq=False, slots=True)
class _Sub:
    """A subscription: remote (``peer`` + ``sid``) or local (``inbox``, or ``callback``
    for a ``listen`` block: unbounded, called from within the delivery)."""

    subject: str
    queue: str
    peer: _Peer | None = None
    sid: int = 0
    inbox: Inbox | None = None
    callback: Callable[[BusPacket], None] | None = None
    on_payload: Callable[[Any], None] | None = None  # a callback's, for payloads alone
    room: int | None = None  # None: unbounded
    alive: bool = True
    group: _Group | None = None
    changes: Changes = field(default_factory=Changes)
    # a remote plain subscription's packets waiting at the router for room, and since when
    # it has made no progress (see ``NngRouter``: slow consumers)
    pending: deque[bytes] = field(default_factory=deque)
    blocked_since: float | None = None

    def has_room(self) -> bool:
        return self.room is None or self.room > 0

    async def changed(self) -> None:
        """Wait until the subscription gets room or ends."""
        await self.changes.wait()

    def notify(self) -> None:
        self.changes.notify()
        if self.group is not None:
            self.group.notify()


@dataclass(slots=True)
class _Listeners:
    plain: tuple[_Sub, ...] = ()
    groups: dict[str, _Group] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.plain and not self.groups


def split_subject(subject: str) -> tuple[bool, str]:
    """``(True, prefix)`` for a ``prefix>`` wildcard subscription, else ``(False, subject)``."""
    if subject.endswith(">") and (len(subject) == 1 or subject[-2] == "."):
        return True, subject[:-1]
    return False, subject


class _Table:
    """Subject → listeners, with ``>`` wildcards as in ``MemoryBus``. Tuples are replaced,
    never mutated, so a delivery can iterate them across awaits.

    ``sole``: the subjects whose one listener is a ``listen`` callback (alone, or the one
    member of its subject's one queue group) while no wildcard subscription exists: a
    delivery on such a subject is a call of that callback (the engine's results), kept
    up to date by ``add`` and ``remove``."""

    def __init__(self) -> None:
        self.exact: dict[str, _Listeners] = {}
        self.wild: dict[str, _Listeners] = {}
        self.sole: dict[str, _Sub] = {}

    def add(self, sub: _Sub) -> None:
        wild, key = split_subject(sub.subject)
        listeners = (self.wild if wild else self.exact).setdefault(key, _Listeners())
        if sub.queue:
            group = listeners.groups.setdefault(sub.queue, _Group())
            group.members = (*group.members, sub)
            sub.group = group
            group.notify()
        else:
            listeners.plain = (*listeners.plain, sub)
        self._find_sole(wild, key)

    def remove(self, sub: _Sub) -> None:
        wild, key = split_subject(sub.subject)
        table = self.wild if wild else self.exact
        listeners = table.get(key)
        if listeners is None:
            return
        if sub.queue:
            group = listeners.groups.get(sub.queue)
            if group is not None:
                group.members = tuple(m for m in group.members if m is not sub)
                if not group.members:
                    del listeners.groups[sub.queue]
                group.notify()
        else:
            listeners.plain = tuple(m for m in listeners.plain if m is not sub)
        if listeners.empty():
            del table[key]
        self._find_sole(wild, key)

    def _find_sole(self, wild: bool, key: str) -> None:
        """Keep ``sole`` right after a change of ``key``'s listeners."""
        if wild:  # any wildcard may match any subject: no subject has a sole listener
            self.sole.clear()
            if not self.wild:
                for subject in self.exact:
                    self._find_sole(False, subject)
            return
        listeners = self.exact.get(key)
        sole = None
        if listeners is not None and not self.wild:
            members: tuple[_Sub, ...] = listeners.plain
            if not members and len(listeners.groups) == 1:
                (group,) = listeners.groups.values()
                members = group.members
            elif listeners.groups:
                members = ()
            if len(members) == 1 and members[0].callback is not None:
                sole = members[0]
                if sole.group is not None:
                    sole.group.turn = 0  # (where a delivery to a group of one leaves it)
        if sole is None:
            self.sole.pop(key, None)
        else:
            self.sole[key] = sole

    def group(self, subject: str, queue: str) -> _Group | None:
        wild, key = split_subject(subject)
        listeners = (self.wild if wild else self.exact).get(key)
        return None if listeners is None else listeners.groups.get(queue)

    def match(self, subject: str) -> Sequence[_Listeners]:
        listeners = self.exact.get(subject)
        if not self.wild:
            return () if listeners is None else (listeners,)
        found = [] if listeners is None else [listeners]
        for prefix, wild in tuple(self.wild.items()):
            if len(subject) > len(prefix) and subject.startswith(prefix):
                found.append(wild)
        return found

    def unheard(self, subject: str) -> bool:
        """Nobody subscribes to ``subject`` (and no wildcard could match it)."""
        return subject not in self.exact and not self.wild

    def count(self) -> int:
        return sum(
            len(ls.plain) + sum(len(g.members) for g in ls.groups.values())
            for table in (self.exact, self.wild)
            for ls in table.values()
        )
