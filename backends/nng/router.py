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

import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_CANCEL,
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobProgress,
    JobRequest,
    JobResult,
    decode_packet,
    encode_packet,
)
from cordtrio.ratelog import rate_limited

from ..job_queues import (
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REDELIVERIES,
    Assignment,
    Consumer,
    JobQueues,
    LostJob,
    worker_lost_result,
)
from ..local_jobs import LocalJobInbox
from ._auth import RateLimited, check_token, new_nonce, verify
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
from .table import Changes
from .table import _Group as _Group
from .table import _Listeners as _Listeners
from .table import _Peer as _Peer
from .table import _Sub as _Sub
from .table import _Table as _Table
from .table import split_subject as split_subject

# ------------------------------------------------------------------------ the router


HEARTBEAT_INTERVAL = 1.0
"""Seconds of silence after which either end of a connection sends a ``ping``."""
LIVENESS_TIMEOUT = 5.0
"""Seconds without a frame after which the router cuts a client (and a client redials)."""
SLOW_CONSUMER_TIMEOUT = 5.0
"""Seconds a remote plain subscriber may go without room before its client is cut off."""
MAX_PENDING_BYTES = 8 * 1024 * 1024
"""Packet bytes the router queues for one client before cutting it off."""
DENIED_LINGER = 0.2
"""Seconds a refused connection stays open so that the ``denied`` frame reaches it."""


class _RemoteConsumer:
    """The handle of a job consumer on a client connection."""

    __slots__ = ("cid", "peer")

    def __init__(self, peer: _Peer, cid: int) -> None:
        self.peer = peer
        self.cid = cid


class NngRouter:
    """The hub of an nng bus, and a ``JobBus`` for the process hosting it.

    Open it with ``open_nng_router``. ``urls`` are the addresses it listens on (a
    ``tcp://host:0`` address is reported with the port nng picked). For monitoring:
    ``peer_count``, ``subscription_count``, ``dropped_frames``; the job queues'
    ``pending_jobs``, ``held_jobs``, ``redelivered_jobs``, ``lost_jobs``; and the clients
    cut off, ``liveness_cuts`` (silent for ``liveness_timeout``) and ``slow_consumers``;
    ``auth_failures`` (connections that could not prove they hold the token) and
    ``forbidden_ops`` (job packets a connection may not publish, dropped).
    """

    def __init__(
        self,
        sock: pynng.Socket,
        *,
        max_packet: int = MAX_PACKET,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        max_pending: int = DEFAULT_MAX_PENDING,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        liveness_timeout: float = LIVENESS_TIMEOUT,
        slow_consumer_timeout: float = SLOW_CONSUMER_TIMEOUT,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        token: str | None = None,
    ) -> None:
        check_token("open_nng_router", token)
        for name, value in (("heartbeat_interval", heartbeat_interval),
                            ("liveness_timeout", liveness_timeout),
                            ("slow_consumer_timeout", slow_consumer_timeout)):
            if not value > 0:
                raise ValueError(f"open_nng_router: {name} must be positive, got {value!r}")
        self._io = ThreadedSender(sock)
        self._max_packet = max_packet
        self._table = _Table()
        self._peers: dict[int, _Peer] = {}
        self._dead = RecentIds()
        self._ready: deque[_Peer] = deque()
        self._wake = Wakeup()
        self._local: set[_Sub] = set()
        self._blocked: set[_Sub] = set()  # remote plain subscriptions with packets pending
        self._nursery: trio.Nursery | None = None
        self._events: PipeEvents | None = None
        self.jobs = JobQueues(max_redeliveries=max_redeliveries, max_pending=max_pending)
        self._jobs_room = Changes()  # publishers of jobs waiting while the queues are full
        self._local_consumers: set[LocalJobInbox] = set()
        self.liveness_timeout = liveness_timeout
        self.heartbeat_interval = min(heartbeat_interval, liveness_timeout / 3)
        self.slow_consumer_timeout = slow_consumer_timeout
        self.max_pending_bytes = max_pending_bytes
        self.closed = False
        self.urls: list[str] = []
        self.dropped_frames = 0
        self.liveness_cuts = 0
        self.slow_consumers = 0
        self.auth_failures = 0
        self.forbidden_ops = 0
        self._token = token
        self._auth_log = RateLimited(log)
        self._forbidden_log = RateLimited(log)

    # ------------------------------------------------------------------ Bus (local)

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Hand ``packet`` to every matching subscriber, local or remote; waits while a
        local subscriber it must reach (or every member of a queue group) has no room,
        like ``MemoryBus``. A job request also goes to its topic's job queue (waiting while
        the queues are full)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        check_subject("publish", subject)
        wire = encode_for_bus(subject, packet, self._max_packet)
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        payload = packet.payload
        if subject == SUBJECT_SUBMIT and isinstance(payload, JobRequest):
            while self.jobs.full:
                await self._jobs_room.wait()
                if self.closed:
                    raise trio.ClosedResourceError("the nng router is closed")
            self._offer_job(payload.job_id, payload.topic, wire)
        elif subject == SUBJECT_CANCEL and isinstance(payload, JobCancel):
            self._cancel_job(payload.job_id)
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

    @asynccontextmanager
    async def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AsyncIterator[LocalJobInbox]:
        """Take jobs of ``topics`` in this process for the duration of the block, at most
        ``capacity`` unacknowledged at once (``JobInbox``). Leaving the block hands every
        job not acknowledged back to its queue (past the bound: reported lost)."""
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        inbox = LocalJobInbox(self._acknowledge)
        consumer, assignments = self.jobs.add(topics, capacity, inbox)
        inbox.consumer = consumer
        self._local_consumers.add(inbox)
        self._hand_out(assignments)
        try:
            yield inbox
        finally:
            self._local_consumers.discard(inbox)
            inbox.close()
            if not self.closed:
                self._remove_consumer(consumer)

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

    @property
    def pending_jobs(self) -> int:
        """Jobs queued, waiting for a consumer of their topic with room."""
        return self.jobs.pending

    @property
    def held_jobs(self) -> int:
        """Jobs delivered to a consumer and not acknowledged yet."""
        return self.jobs.held

    @property
    def redelivered_jobs(self) -> int:
        """Jobs handed back to their queue because their consumer was lost (total)."""
        return self.jobs.redelivered

    @property
    def lost_jobs(self) -> int:
        """Jobs reported failed ("worker lost") past the redelivery bound (total)."""
        return self.jobs.lost

    @property
    def queued_bytes(self) -> int:
        """Packet bytes waiting in the router for clients to take them."""
        return sum(peer.queued_bytes for peer in self._peers.values())

    # ------------------------------------------------------------------ delivery

    def _deliver(self, subject: str, wire: bytes) -> list[Callable[[], Awaitable[None]]]:
        """Hand the packet to every subscriber with room now (a remote plain subscriber
        without room gets it queued here); return what must wait."""
        waits: list[Callable[[], Awaitable[None]]] = []
        for listeners in self._table.match(subject):
            for sub in listeners.plain:
                if not sub.alive:
                    continue
                if sub.peer is not None and (sub.pending or not sub.has_room()):
                    self._hold(sub, wire)
                elif sub.has_room():
                    self._push(sub, wire)
                else:
                    waits.append(partial(self._deliver_plain, sub, wire))
            for group in tuple(listeners.groups.values()):
                if not self._try_group(group, wire):
                    waits.append(partial(self._deliver_to_group, group, wire))
        return waits

    def _hold(self, sub: _Sub, wire: bytes) -> None:
        """Queue a packet for a remote plain subscriber that has no room: publishers never
        wait for it; a subscriber that stays without room is cut off (``_check_peers``)."""
        peer = sub.peer
        assert peer is not None
        if peer.doomed or peer.closed:
            return
        if self._over_bound(peer, wire):
            return
        if not sub.pending:
            sub.blocked_since = trio.current_time()
            self._blocked.add(sub)
        sub.pending.append(wire)
        peer.queued_bytes += len(wire)

    def _over_bound(self, peer: _Peer, wire: bytes) -> bool:
        """Queueing ``wire`` for ``peer`` would pass ``max_pending_bytes``: it is cut off
        instead (a client that does not keep up)."""
        if peer.queued_bytes + len(wire) <= self.max_pending_bytes:
            return False
        self._doom(peer, f"more than {self.max_pending_bytes} bytes of packets would wait "
                         "for it", slow=True)
        return True

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
                    self._blocked.discard(sub)
            sub.notify()

    def _drop_sub(self, sub: _Sub) -> None:
        if not sub.alive:
            return
        sub.alive = False
        self._table.remove(sub)
        sub.notify()
        peer = sub.peer
        if sub.pending:
            if peer is not None:
                peer.queued_bytes -= sum(map(len, sub.pending))
            sub.pending.clear()
        self._blocked.discard(sub)
        if peer is not None and peer.subs.get(sub.sid) is sub:
            del peer.subs[sub.sid]

    def _bounce(self, subject: str, queue: str, wire: bytes) -> None:
        """Re-deliver a queue-group packet its member could not take to the group."""
        group = self._table.group(subject, queue)
        if group is None or self._try_group(group, wire):
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._deliver_to_group, group, wire)

    # ------------------------------------------------------------------ job queues

    def _offer_job(self, job_id: str, topic: str, wire: bytes) -> None:
        assignment = self.jobs.offer(job_id, topic, wire)
        if assignment is not None:
            self._hand_out((assignment,))

    def _cancel_job(self, job_id: str) -> None:
        self.jobs.cancel(job_id)
        self._jobs_room.notify()

    def _acknowledge(self, consumer: Consumer, job_id: str) -> None:
        if not self.closed:
            self._hand_out(self.jobs.ack(consumer, job_id))

    def _hand_out(self, assignments: Iterable[Assignment]) -> None:
        todo = deque(assignments)
        while todo:
            a = todo.popleft()
            wire: bytes = a.job.item
            handle = a.consumer.handle
            if isinstance(handle, _RemoteConsumer):
                self._send(handle.peer, {"op": "job", "cid": handle.cid, "packet": wire})
                continue
            assert isinstance(handle, LocalJobInbox)
            try:
                packet = decode_packet(wire)
            except ProtocolError as exc:  # from a client: it cannot run; drop the job
                self.dropped_frames += 1
                log.warning("nng router: dropped job %s, its packet does not decode: %s",
                            a.job.job_id, exc)
                todo.extend(self.jobs.ack(a.consumer, a.job.job_id))
                continue
            handle.deliver(packet)
        if not self.jobs.full:
            self._jobs_room.notify()

    def _remove_consumer(self, consumer: Consumer) -> None:
        assignments, lost = self.jobs.remove(consumer)
        self._hand_out(assignments)
        if lost and self._nursery is not None and not self.closed:
            self._nursery.start_soon(self._report_lost, lost)

    async def _report_lost(self, lost: list[LostJob]) -> None:
        for job in lost:
            log.warning("nng router: job %s: its worker was lost %d times; reported as "
                        "failed", job.job_id, job.deliveries)
            trace_id = job.job_id.rpartition(":")[0]
            with contextlib.suppress(ProtocolError):
                trace_id = decode_packet(job.item).trace_id
            result = worker_lost_result(job.job_id, job.deliveries)
            with contextlib.suppress(trio.ClosedResourceError):
                await self.publish(SUBJECT_RESULT, BusPacket(
                    trace_id, "cordtrio-bus", datetime.now(UTC), PROTOCOL_VERSION, result))

    # ------------------------------------------------------------------ peers

    def _send(self, peer: _Peer, op: Op) -> None:
        if peer.closed or peer.doomed:
            return
        packet = op.get("packet")
        if packet is not None:
            if self._over_bound(peer, packet):
                return
            peer.queued_bytes += len(packet)
        peer.outbox.append(op)
        self._kick(peer)

    def _kick(self, peer: _Peer) -> None:
        if not peer.queued and peer.can_send():
            peer.queued = True
            self._ready.append(peer)
            self._wake.set()

    def _open_peer(self, pipe: pynng.Pipe, pipe_id: int) -> _Peer:
        peer = _Peer(pipe, pipe_id, secrets.randbits(62), trio.current_time())
        self._peers[pipe_id] = peer
        hello: Op = {"op": "hello", "conn": peer.token, "proto": PROTO, "window": WINDOW,
                     "live": self.liveness_timeout}
        if self._token is not None:
            peer.authed = False
            peer.nonce = hello["nonce"] = new_nonce()
        self._send(peer, hello)
        log.debug("nng router: client pipe %d connected", pipe_id)
        return peer

    def _close_peer(self, peer: _Peer) -> None:
        peer.closed = True
        peer.outbox.clear()
        for sub in tuple(peer.subs.values()):
            self._drop_sub(sub)
        peer.queued_bytes = 0
        consumers = tuple(peer.consumers.values())
        peer.consumers.clear()
        for consumer in consumers:
            self._remove_consumer(consumer)
        log.debug("nng router: client pipe %d gone", peer.id)

    def _doom(self, peer: _Peer, reason: str, *, slow: bool = False) -> None:
        """Cut ``peer`` off as soon as the current operation is over (nothing more is
        queued for it meanwhile)."""
        if peer.doomed or peer.closed:
            return
        peer.doomed = reason
        peer.outbox.clear()
        if slow:
            self.slow_consumers += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._cut, peer)

    async def _cut(self, peer: _Peer, linger: float = 0.0) -> None:
        if linger:
            await trio.sleep(linger)
        if peer.closed:
            return
        if peer.authed:
            log.warning("nng router: cut off client pipe %d (%s): %s", peer.id,
                        _remote(peer.pipe), peer.doomed)
        with contextlib.suppress(Exception):
            peer.pipe.close()
        self._pipe_removed(peer.id)

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

    async def _check_peers(self) -> None:
        """Ping idle clients, cut off silent ones and subscribers that stay without room.
        Time during which the router itself did not run (a stalled or stopped process)
        does not count against its clients."""
        tick = min(self.heartbeat_interval, self.liveness_timeout,
                   self.slow_consumer_timeout) / 4
        last = trio.current_time()
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            stalled = now - last - tick
            last = now
            if stalled > tick:
                for peer in self._peers.values():
                    peer.last_heard += stalled
                for sub in self._blocked:
                    if sub.blocked_since is not None:
                        sub.blocked_since += stalled
            for peer in tuple(self._peers.values()):
                if peer.doomed:
                    continue
                if not peer.authed:
                    if now - peer.last_heard > self.liveness_timeout:
                        self._deny(peer, f"no proof that it holds the token within "
                                         f"{self.liveness_timeout:g} s")
                    continue
                if now - peer.last_heard > self.liveness_timeout:
                    self.liveness_cuts += 1
                    self._doom(peer, f"heard nothing from it for "
                                     f"{now - peer.last_heard:.1f} s")
                elif now - peer.last_sent >= self.heartbeat_interval and not peer.outbox:
                    peer.last_sent = now  # don't queue another ping before this one goes
                    self._send(peer, {"op": "ping"})
            for sub in tuple(self._blocked):
                owner = sub.peer
                if (owner is not None and sub.blocked_since is not None
                        and now - sub.blocked_since > self.slow_consumer_timeout):
                    self._doom(owner, f"its subscription to {sub.subject!r} had no room for "
                                     f"{now - sub.blocked_since:.1f} s", slow=True)

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        await self._io.receive_forever(self._on_message, "nng router", RECV_BATCH)

    def _on_message(self, msg: pynng.Message) -> None:
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in self._dead:
            return  # from a connection that is already gone
        peer = self._peers.get(pipe_id) or self._open_peer(pipe, pipe_id)
        if peer.doomed:
            return
        peer.last_heard = trio.current_time()
        data = msg.bytes
        try:
            ops = decode_frame(data)
        except FrameError as exc:
            self._garbage(peer, f"frame ({describe(data)})", exc)
            return
        if not peer.authed:
            ops = self._authenticate(peer, ops)
        for op in ops:
            try:
                self._on_op(peer, op)
            except FrameError as exc:
                self._garbage(peer, "op", exc)

    def _authenticate(self, peer: _Peer, ops: list[Any]) -> list[Any]:
        """The first op of an unauthenticated connection must be a good ``auth``: then the
        rest of the frame is handled; else nothing is, and the connection is refused."""
        assert self._token is not None
        first = ops[0] if ops else None
        if not isinstance(first, dict) or first.get("op") != "auth":
            self._deny(peer, "it sent something else before proving it holds the token")
            return []
        if not verify(self._token, peer.nonce, peer.token, first.get("mac")):
            self._deny(peer, "its proof does not match the token")
            return []
        peer.authed = True
        self._send(peer, {"op": "authok"})
        return ops[1:]

    def _deny(self, peer: _Peer, reason: str) -> None:
        """A connection that cannot prove it holds the token: tell it, count it, close it."""
        if peer.doomed or peer.closed:
            return
        self.auth_failures += 1
        self._auth_log.log(logging.WARNING, "nng router: refused client pipe %d (%s): %s",
                           peer.id, _remote(peer.pipe), reason)
        self._send(peer, {"op": "denied"})
        peer.doomed = reason
        assert self._nursery is not None
        self._nursery.start_soon(self._cut, peer, DENIED_LINGER)

    def _garbage(self, peer: _Peer, what: str, exc: Exception) -> None:
        self.dropped_frames += 1
        rate_limited(log).warning(f"{id(self)} {what}", "nng router: dropped a malformed %s "
                                  "from pipe %d: %s", what, peer.id, exc)

    def _on_op(self, peer: _Peer, op: Any) -> None:
        name = op_name(op)
        if name == "pub":
            self._on_pub(peer, op)
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
        elif name == "ack":
            cid = int_field(op, "cid")
            job_id = str_field(op, "jid", empty=False)
            consumer = peer.consumers.get(cid)
            if consumer is not None:
                self._hand_out(self.jobs.ack(consumer, job_id))
        elif name in ("ping", "auth"):
            pass  # hearing from the client is all a ping is for; auth: already proven
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
        elif name == "jobs":
            cid = int_field(op, "cid")
            capacity = int_field(op, "cap")
            topics = op.get("topics")
            if (not isinstance(topics, list) or not topics
                    or not all(isinstance(t, str) and t for t in topics)):
                raise FrameError(f"'jobs' op: 'topics' must be a non-empty list of "
                                 f"strings: {topics!r}")
            if capacity < 1:
                raise FrameError(f"'jobs' op: 'cap' must be >= 1: {capacity}")
            old_consumer = peer.consumers.pop(cid, None)
            if old_consumer is not None:
                self._remove_consumer(old_consumer)
            consumer, assignments = self.jobs.add(topics, capacity,
                                                  _RemoteConsumer(peer, cid))
            peer.consumers[cid] = consumer
            self._send(peer, {"op": "jobsack", "cid": cid})
            self._hand_out(assignments)
        elif name == "unjobs":
            gone_consumer = peer.consumers.pop(int_field(op, "cid"), None)
            if gone_consumer is not None:
                self._remove_consumer(gone_consumer)
        elif name == "bye":  # answered after every op before it: the client may go
            self._send(peer, {"op": "bye", "n": int_field(op, "n")})
        elif name == "bounce":
            subject = str_field(op, "subject", empty=False)
            queue = str_field(op, "queue", empty=False)
            wire = packet_field(op)
            if not self._refused(peer, subject, wire, ""):
                self._bounce(subject, queue, wire)
        else:
            raise FrameError(f"unknown op {name!r}")

    def _on_pub(self, peer: _Peer, op: Op) -> None:
        pid = int_field(op, "pid")
        subject = str_field(op, "subject", empty=False)
        wire = packet_field(op)
        job_id = str_field(op, "jid", default="") if "jid" in op else ""
        reason = self._refused(peer, subject, wire, job_id)
        if reason:
            self._send(peer, {"op": "puback", "pid": pid, "error": f"forbidden: {reason}"})
            return
        if subject == SUBJECT_SUBMIT and job_id:
            topic = str_field(op, "topic", empty=False)
            if self.jobs.full:  # no puback until the queues have room
                assert self._nursery is not None
                self._nursery.start_soon(self._publish_job_later, peer, pid, subject, wire,
                                         job_id, topic)
                return
            self._offer_job(job_id, topic, wire)
        elif subject == SUBJECT_CANCEL and job_id:
            self._cancel_job(job_id)
        self._fan_out(peer, pid, subject, wire)

    def _refused(self, peer: _Peer, subject: str, wire: bytes, claimed: str) -> str:
        """Why ``peer`` may not publish this job packet ("" if it may): job results and
        progress only from the connection holding the job (the router's own process may
        publish anything); on a router with a token, no job requests or cancels from a
        connection that takes jobs. Counted, logged (rate-limited)."""
        reason = self._check_job_packet(peer, subject, wire, claimed)
        if reason:
            self.forbidden_ops += 1
            self._forbidden_log.log(logging.WARNING, "nng router: dropped a packet on %r "
                                    "from client pipe %d: %s", subject, peer.id, reason)
        return reason

    def _check_job_packet(self, peer: _Peer, subject: str, wire: bytes, claimed: str) -> str:
        if subject in (SUBJECT_SUBMIT, SUBJECT_CANCEL):
            if self._token is not None and peer.consumers:
                return "a connection that takes jobs may not publish job requests or cancels"
            return ""
        if subject not in (SUBJECT_RESULT, SUBJECT_PROGRESS):
            return ""
        kind = JobResult if subject == SUBJECT_RESULT else JobProgress
        try:  # (small packets: a pointer to the output, not the output)
            payload = decode_packet(wire).payload
        except ProtocolError as exc:
            raise FrameError(f"a packet on {subject!r} does not decode: {exc}") from None
        if not isinstance(payload, kind):
            return f"not a {kind.__name__}"
        job_id = payload.job_id
        if claimed and claimed != job_id:
            return f"the packet is about job {job_id}, the op says {claimed}"
        job = self.jobs.get(job_id)
        if job is None:
            return ""  # not held here: acknowledged already, or from before a restart
        handle = job.holder.handle if job.holder is not None else None
        if isinstance(handle, _RemoteConsumer) and handle.peer is peer:
            return ""
        return f"job {job_id} is not held by this connection"

    def _fan_out(self, peer: _Peer, pid: int, subject: str, wire: bytes) -> None:
        waits = self._deliver(subject, wire)
        if waits:
            assert self._nursery is not None
            self._nursery.start_soon(self._finish_publish, peer, pid, waits)
        else:
            self._send(peer, {"op": "puback", "pid": pid})

    async def _publish_job_later(self, peer: _Peer, pid: int, subject: str, wire: bytes,
                                 job_id: str, topic: str) -> None:
        while self.jobs.full and not peer.closed:
            await self._jobs_room.wait()
        if peer.closed:
            return  # the client sends it again on its next connection
        self._offer_job(job_id, topic, wire)
        self._fan_out(peer, pid, subject, wire)

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
            frame = take_frame(peer.outbox, resolve=peer.taken)
            peer.sent += 1
            peer.last_sent = trio.current_time()
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
        nursery.start_soon(self._check_peers)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        for peer in tuple(self._peers.values()):
            peer.closed = True
            peer.outbox.clear()
        self._peers.clear()
        for sub in tuple(self._local):
            self._drop_sub(sub)
            if sub.inbox is not None:
                sub.inbox.end()
        for inbox in tuple(self._local_consumers):
            inbox.close()
        self._jobs_room.notify()
        self._io.close()


def _remote(pipe: pynng.Pipe) -> str:
    try:
        return str(pipe.remote_address)
    except Exception:
        return "?"


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
    if sep and scheme in ("tcp", "tcp4", "tls+tcp") and rest.endswith(":0"):
        try:
            return f"{scheme}://{listener.local_address}"
        except Exception:  # pragma: no cover - an exotic address family
            return address
    return address


def uses_tls(address: str) -> bool:
    return address.partition("://")[0].startswith("tls+")


def _read_pem(who: str, option: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CordtrioError(f"{who}: cannot read {option} {path!r}: {exc}") from None


def server_tls(addresses: tuple[str, ...], cert_file: str | None,
               key_file: str | None) -> pynng.TLSConfig | None:
    """The router's TLS configuration: needed exactly when an address is ``tls+...``."""
    tls_addresses = [a for a in addresses if uses_tls(a)]
    if not tls_addresses:
        if cert_file or key_file:
            raise ValueError("open_nng_router: tls_cert_file/tls_key_file given, but no "
                             "tls+tcp:// address to use them on")
        return None
    if not cert_file or not key_file:
        raise CordtrioError(f"nng router: {tls_addresses[0]!r} needs tls_cert_file and "
                            "tls_key_file")
    cert = _read_pem("nng router", "tls_cert_file", cert_file)
    key = _read_pem("nng router", "tls_key_file", key_file)
    try:
        return pynng.TLSConfig(pynng.TLSConfig.MODE_SERVER, own_cert_string=cert,
                               own_key_string=key)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng router: unusable TLS certificate or key "
                            f"({cert_file}, {key_file}): {exc}") from exc


@asynccontextmanager
async def open_nng_router(
    *addresses: str,
    max_packet: int = MAX_PACKET,
    max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
    max_pending: int = DEFAULT_MAX_PENDING,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    liveness_timeout: float = LIVENESS_TIMEOUT,
    slow_consumer_timeout: float = SLOW_CONSUMER_TIMEOUT,
    max_pending_bytes: int = MAX_PENDING_BYTES,
    token: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> AsyncIterator[NngRouter]:
    """Listen on ``addresses`` (``ipc://path``, ``tcp://host:port``...) for bus clients and
    yield the router, which is also a ``JobBus`` for this process. Leaving the block
    closes every client connection (clients keep redialling until a router is back) and
    ends the local subscribers' channels.

    ``max_redeliveries`` and ``max_pending`` configure the job queues
    (``backends/job_queues.py``). A client the router hears nothing from for
    ``liveness_timeout`` seconds is cut off (its unacknowledged jobs go to other
    workers); both ends ping after ``heartbeat_interval`` seconds of silence. A client
    with a plain subscription that has had no room for ``slow_consumer_timeout`` seconds,
    or with more than ``max_pending_bytes`` of packets waiting for it, is cut off too.

    With a ``token``, a connection must prove it holds the same token (HMAC challenge,
    the token never crosses the wire) before anything it sends is handled or anything is
    sent to it. ``tls+tcp://`` addresses need ``tls_cert_file`` and ``tls_key_file``
    (PEM). See ``docs/bus.md`` (*Security*)."""
    if not addresses:
        raise ValueError("open_nng_router: give at least one address to listen on")
    tls = server_tls(addresses, tls_cert_file, tls_key_file)
    try:
        sock = pynng.Pair1(polyamorous=True, recv_max_size=max_frame(max_packet),
                           recv_buffer_size=SOCKET_BUFFER, send_buffer_size=SOCKET_BUFFER,
                           tls_config=tls)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng router: cannot open a socket: {exc}") from exc
    try:
        router = NngRouter(sock, max_packet=max_packet, max_redeliveries=max_redeliveries,
                           max_pending=max_pending, heartbeat_interval=heartbeat_interval,
                           liveness_timeout=liveness_timeout,
                           slow_consumer_timeout=slow_consumer_timeout,
                           max_pending_bytes=max_pending_bytes, token=token)
    except ValueError:
        sock.close()
        raise
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


__all__ = [
    "HEARTBEAT_INTERVAL",
    "LIVENESS_TIMEOUT",
    "MAX_PACKET",
    "MAX_PENDING_BYTES",
    "SLOW_CONSUMER_TIMEOUT",
    "LocalJobInbox",
    "NngRouter",
    "open_nng_router",
]
