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

import contextlib
import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.protocol import (
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

from ._auth import RateLimited, check_token, proof
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
from .inbox import Inbox, JobChannel

CONNECT_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 1.0
"""Seconds without sending anything after which the client sends a ``ping``."""
LIVENESS_TIMEOUT = 5.0
"""Until the router announces its own: seconds without a frame after which the client
drops the connection and redials."""
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
    job_id: str = ""  # the job a job-queue packet is about (the router reads no packets)
    topic: str = ""  # a job request's topic
    done: trio.Event = field(default_factory=trio.Event)
    acked: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """An outbox entry resolved when the frame is built: a publish or a room grant."""

    kind: str  # "pub" | "room"
    id: int


_JOB_SUBJECTS = {SUBJECT_SUBMIT: JobRequest, SUBJECT_CANCEL: JobCancel,
                 SUBJECT_RESULT: JobResult, SUBJECT_PROGRESS: JobProgress}


def _job_fields(subject: str, packet: BusPacket) -> tuple[str, str]:
    """``(job id, topic)`` the router needs to see of a job-queue packet, else empty."""
    kind = _JOB_SUBJECTS.get(subject)
    payload = packet.payload
    if kind is None or not isinstance(payload, kind):
        return "", ""
    assert isinstance(payload, JobRequest | JobCancel | JobResult | JobProgress)
    topic = payload.topic if isinstance(payload, JobRequest) else ""
    return payload.job_id, topic


class NngBus:
    """A ``Bus`` over a connection to an ``NngRouter``; open it with ``open_nng_bus``.

    ``connected`` tells whether the router is reachable (and has accepted this client)
    right now; ``refused`` says why the router or this client refused the last
    connection (a token mismatch), empty once one is accepted; ``connections`` counts
    the connections made so far (it grows on every reconnection); ``dropped_frames`` counts
    malformed frames, ops and packets that were logged and ignored; ``liveness_resets``
    counts connections dropped because the router was not heard from in time.
    """

    def __init__(self, address: str, sock: pynng.Socket, *, max_in_flight: int = MAX_IN_FLIGHT,
                 max_packet: int = MAX_PACKET,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 token: str | None = None) -> None:
        check_token("open_nng_bus", token)
        if not heartbeat_interval > 0:
            raise ValueError(f"open_nng_bus: heartbeat_interval must be positive, "
                             f"got {heartbeat_interval!r}")
        self.address = address
        self._io = TrioSocket(sock)
        self._max_packet = max_packet
        self._ids = itertools.count(1)
        self._subs: dict[int, _Subscription] = {}
        self._subacks: dict[int, trio.Event] = {}
        self._left: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._pubs: dict[int, _Publish] = {}
        self._consumers: dict[int, JobChannel] = {}
        self._jobacks: dict[int, trio.Event] = {}
        self._room_due: dict[int, int] = {}
        self._byes: dict[int, trio.Event] = {}
        self._bounced = 0  # bounces queued so far
        self._in_flight = trio.Semaphore(max_in_flight)
        self._outbox: deque[Op | _Pending] = deque()
        self._wake = Wakeup()
        self._pipe_id: int | None = None
        self._pipe: pynng.Pipe | None = None
        self._heartbeat = heartbeat_interval
        self._live = LIVENESS_TIMEOUT  # the router's, from its hello
        self._last_heard = 0.0  # Trio clock: the last frame from the router
        self._last_sent = 0.0  # the last frame handed to nng
        self._paused: trio.Event | None = None  # tests: a process that stopped running
        self._token = token
        self._accepted = False  # the router has said hello (and accepted our proof)
        self._auth_op: Op | None = None  # our proof, to go first on this connection
        self._auth_sent = False
        self._refusal_log = RateLimited(log)
        self.refused = ""
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
        self.liveness_resets = 0

    # ------------------------------------------------------------------ Bus

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Send ``packet`` through the router; returns once every subscriber has been
        handed it (waiting while one it must reach has no room). While the router is
        unreachable this waits, and re-sends after the reconnection; bound it with a
        cancel scope if that matters."""
        await trio.lowlevel.checkpoint_if_cancelled()
        check_subject("publish", subject)
        wire = encode_for_bus(subject, packet, self._max_packet)
        job_id, topic = _job_fields(subject, packet)
        self._check_open()
        async with self._in_flight:
            self._check_open()
            pid = next(self._ids)
            pub = _Publish(subject, wire, job_id, topic)
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

    @asynccontextmanager
    async def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AsyncIterator[JobChannel]:
        """Take jobs of ``topics`` for the duration of the block, at most ``capacity``
        unacknowledged at once (the ``JobInbox`` port). The router knows the consumer when
        the block starts. When the connection is reset, the jobs received on it and not
        acknowledged go to ``on_lost`` (the router gives them to another worker); leaving
        the block hands every job not acknowledged back to the router."""
        names = frozenset(topics)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ValueError(f"consume_jobs: give at least one topic, got {topics!r}")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"consume_jobs: capacity must be an int >= 1, got {capacity!r}")
        self._check_open()
        inbox = JobChannel(next(self._ids), names, capacity)
        inbox.on_ack = partial(self._ack_job, inbox.cid)
        inbox.on_close = partial(self._stop_consuming, inbox.cid)
        acked = trio.Event()
        self._consumers[inbox.cid] = inbox
        self._jobacks[inbox.cid] = acked
        self._queue(self._jobs_op(inbox))
        try:
            await acked.wait()
            self._check_open()
            yield inbox
        finally:
            inbox.close()

    @staticmethod
    def _jobs_op(inbox: JobChannel) -> Op:
        return {"op": "jobs", "cid": inbox.cid, "topics": sorted(inbox.topics),
                "cap": inbox.capacity}

    def _ack_job(self, cid: int, job_id: str) -> None:
        if cid in self._consumers and self._pipe_id is not None:
            self._queue({"op": "ack", "cid": cid, "jid": job_id})

    def _stop_consuming(self, cid: int) -> None:
        self._jobacks.pop(cid, None)
        if self._consumers.pop(cid, None) is None or self.closed:
            return
        if self._pipe_id is not None:
            self._queue({"op": "unjobs", "cid": cid})

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
        return self._accepted

    async def wait_connected(self) -> None:
        """Return once connected to the router (and accepted by it), or once a connection
        was refused (``refused`` says why)."""
        while not self._accepted and not self.closed and not self.refused:
            await self._connected.wait()

    def _may_send(self) -> bool:
        """Ops may go out on this connection: without a token from the start (the router's
        hello is not awaited), with one once our proof is on its way ahead of them."""
        if self._pipe_id is None or self.refused:
            return False
        return self._token is None or self._auth_sent

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
        self._pipe = pipe
        self.connections += 1
        self._conn = None
        self._accepted = self._auth_sent = False
        self._auth_op = None
        self._last_heard = self._last_sent = trio.current_time()
        self._frames_in = 0
        self._credit_sent = 0
        # Rebuild the outbox from the state: subscriptions (with fresh room), then the
        # publishes still unconfirmed, then packets bounced back to their groups.
        bounces = [op for op in self._outbox if isinstance(op, dict) and op["op"] == "bounce"]
        self._outbox.clear()
        self._room_due.clear()
        self._outbox.extend(sub.op() for sub in self._subs.values())
        self._outbox.extend(self._jobs_op(inbox) for inbox in self._consumers.values())
        self._outbox.extend(_Pending("pub", pid) for pid in sorted(self._pubs))
        self._outbox.extend(bounces)
        self._wake.set()
        if self.connections > 1:
            log.info("nng bus: reconnected to %s (%d subscriptions, %d publishes re-sent)",
                     self.address, len(self._subs), len(self._pubs))

    def _pipe_removed(self, pipe_id: int) -> None:
        self._dead.add(pipe_id)
        if pipe_id != self._pipe_id:
            return
        self._pipe_id = None
        self._pipe = None
        self._conn = None
        self._accepted = False
        for inbox in tuple(self._consumers.values()):  # the router took those jobs back
            lost = inbox.reset()
            if lost:
                log.warning("nng bus: the connection to %s was reset; %d job(s) received "
                            "on it go to another worker", self.address, len(lost))
        self._connected = trio.Event()
        if self._send_scope is not None:
            self._send_scope.cancel()
        for done in self._byes.values():  # nobody is going to answer those
            done.set()
        if not self.closed:
            log.warning("nng bus: lost the connection to %s; redialling", self.address)

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        await self._io.receive_forever(self._on_message, "nng bus", RECV_BATCH,
                                       gate=self._unpaused)

    async def _unpaused(self) -> None:
        while self._paused is not None:
            await self._paused.wait()

    async def _heartbeat_loop(self) -> None:
        """Ping the router after ``heartbeat_interval`` of silence (so that it knows we are
        alive) and drop a connection the router has been silent on for longer than its
        liveness timeout."""
        while True:
            tick = min(self._heartbeat, self._live / 3) / 2
            await trio.sleep(tick)
            await self._unpaused()
            if self._pipe_id is None or not self._accepted:
                continue
            now = trio.current_time()
            if now - self._last_heard > self._live:
                self._reset(now - self._last_heard)
            elif now - self._last_sent >= 2 * tick and not self._outbox:
                self._queue({"op": "ping"})

    def _on_message(self, msg: pynng.Message) -> None:
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in self._dead:
            return
        if pipe_id != self._pipe_id:
            self._pipe_added(pipe)  # the frame overtook the connect event
        now = trio.current_time()
        if self._conn is not None and now - self._last_heard > self._live:
            # Nothing heard for longer than the router waits before cutting us off (this
            # process was stopped, or its loop blocked): the router has given our jobs to
            # others. Drop the connection before delivering anything that was on it.
            self._reset(now - self._last_heard)
            return
        self._last_heard = now
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

    def _reset(self, silence: float) -> None:
        """Drop the current connection (nng redials)."""
        pipe, pipe_id = self._pipe, self._pipe_id
        if pipe is None or pipe_id is None:
            return
        self.liveness_resets += 1
        log.warning("nng bus: heard nothing from %s for %.1f s; dropping the connection "
                    "and redialling", self.address, silence)
        self._pipe_removed(pipe_id)
        with contextlib.suppress(Exception):
            pipe.close()

    def _on_op(self, op: Any) -> None:
        name = op_name(op)
        if name == "msg":
            self._deliver(int_field(op, "sid"), bytes_field(op, "packet"))
        elif name == "job":
            self._deliver_job(int_field(op, "cid"), bytes_field(op, "packet"))
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
        elif name == "jobsack":
            acked = self._jobacks.get(int_field(op, "cid"))
            if acked is not None:
                acked.set()
        elif name == "ping":
            pass  # hearing from the router is all it is for
        elif name == "authok":
            if self._auth_sent:
                self._accept()
        elif name == "denied":
            self._refuse(f"the router at {self.address} refused this client's token")
        elif name == "bye":
            done = self._byes.get(int_field(op, "n"))
            if done is not None:
                done.set()
        elif name == "hello":
            self._conn = int_field(op, "conn")
            window = op.get("window")
            self._window = window if isinstance(window, int) and window > 0 else WINDOW
            live = op.get("live")
            valid = isinstance(live, int | float) and not isinstance(live, bool)
            self._live = float(live) if valid and 0 < live < math.inf else LIVENESS_TIMEOUT
            if op.get("proto") != PROTO:
                log.warning("nng bus: router at %s speaks protocol %r, this client %d",
                            self.address, op.get("proto"), PROTO)
            self._hello(op)
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

    def _hello(self, op: Op) -> None:
        nonce = op.get("nonce")
        if nonce is not None and not isinstance(nonce, bytes):
            raise FrameError(f"'hello' op: 'nonce' must be bytes: {nonce!r}")
        if self._token is None:
            if nonce is not None:
                self._refuse(f"the router at {self.address} requires a token, and this "
                             "client has none")
            else:
                self._accept()
        elif nonce is None:
            self._refuse(f"the router at {self.address} has no token, and this client, "
                         "which has one, does not talk to a bus without authentication")
        elif self._conn is not None and not self._auth_sent:
            self._auth_op = {"op": "auth", "mac": proof(self._token, nonce, self._conn)}
            self._wake.set()

    def _accept(self) -> None:
        self._accepted = True
        self.refused = ""
        self._connected.set()

    def _refuse(self, reason: str) -> None:
        """The connection cannot be used (a token mismatch): say so, drop it (nng redials;
        ``open_nng_bus`` gives up if this is its first connection)."""
        self.refused = reason
        self._refusal_log.log(logging.ERROR, "nng bus: %s", reason)
        self._connected.set()  # wake open_nng_bus
        pipe, pipe_id = self._pipe, self._pipe_id
        if pipe_id is not None:
            self._pipe_removed(pipe_id)
        if pipe is not None:
            with contextlib.suppress(Exception):
                pipe.close()

    def _deliver_job(self, cid: int, wire: bytes) -> None:
        inbox = self._consumers.get(cid)
        if inbox is None:
            return  # it left: the router hands the job to another consumer
        try:
            packet = decode_packet(wire)
        except ProtocolError as exc:
            self._garbage(f"job for consumer {cid}", exc)
            return
        payload = packet.payload
        if not isinstance(payload, JobRequest):
            self._garbage(f"job for consumer {cid}",
                          FrameError(f"not a JobRequest: {type(payload).__name__}"))
            return
        inbox.put(payload.job_id, packet)

    # ------------------------------------------------------------------ sending

    def _resolve(self, item: Op | _Pending) -> Op | None:
        if isinstance(item, dict):
            return item
        if item.kind == "pub":
            pub = self._pubs.get(item.id)
            if pub is None:
                return None  # given up (cancelled) before it was sent
            op: Op = {"op": "pub", "pid": item.id, "subject": pub.subject, "packet": pub.wire}
            if pub.job_id:
                op["jid"] = pub.job_id
                if pub.topic:
                    op["topic"] = pub.topic
            return op
        room = self._room_due.pop(item.id, 0)
        return {"op": "room", "sid": item.id, "n": room} if room else None

    async def _writer_loop(self) -> None:
        while True:
            if self._paused is not None:
                await self._paused.wait()
                continue
            # Credit rides along with every frame; on its own only when the router may
            # have run out of it (``window`` frames received since the last credit).
            owed = self._frames_in - self._credit_sent if self._conn is not None else 0
            auth = self._auth_op if self._pipe_id is not None else None
            if auth is None and (not self._may_send()
                                 or not (self._outbox or owed >= self._window)):
                await self._wake.wait()
                continue
            first: list[Op] = []
            if auth is not None:  # our proof goes first; the rest may follow it at once
                first.append(auth)
                self._auth_op = None
                self._auth_sent = True
            if owed:
                first.append({"op": "credit", "conn": self._conn, "n": self._frames_in})
                self._credit_sent = self._frames_in
            frame = take_frame(self._outbox, first, self._resolve)
            self._last_sent = trio.current_time()
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
            for cid in self._consumers:
                self._queue({"op": "unjobs", "cid": cid})
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
        nursery.start_soon(self._heartbeat_loop)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        for pub in self._pubs.values():
            pub.done.set()
        for acked in (*self._subacks.values(), *self._jobacks.values()):
            acked.set()
        for sub in self._subs.values():
            sub.inbox.end()
        for inbox in self._consumers.values():
            inbox.end()
        self._connected.set()
        self._io.close()


def client_tls(address: str, ca_file: str | None,
               server_name: str | None) -> pynng.TLSConfig | None:
    """The client's TLS configuration: needed exactly when the address is ``tls+...``."""
    scheme, _, rest = address.partition("://")
    if not scheme.startswith("tls+"):
        if ca_file or server_name:
            raise ValueError("open_nng_bus: tls_ca_file/tls_server_name given for "
                             f"{address!r}, which is not a tls+tcp:// address")
        return None
    if not ca_file:
        raise CordtrioError(f"nng bus: {address!r} needs tls_ca_file (the router's "
                            "certificate or its CA)")
    if server_name is None:
        server_name = rest.rpartition(":")[0].strip("[]")
    try:
        with open(ca_file, encoding="ascii") as f:
            ca = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CordtrioError(f"nng bus: cannot read tls_ca_file {ca_file!r}: {exc}") from None
    try:
        return pynng.TLSConfig(pynng.TLSConfig.MODE_CLIENT, ca_string=ca,
                               server_name=server_name)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng bus: unusable tls_ca_file {ca_file!r}: {exc}") from exc


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
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    token: str | None = None,
    tls_ca_file: str | None = None,
    tls_server_name: str | None = None,
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

    The client pings the router after ``heartbeat_interval`` seconds without sending (at
    least three times per liveness timeout the router announces), and drops and redials
    a connection the router has said nothing on for longer than that timeout.

    ``token``: the router's token, proven (never sent) on every connection; a mismatch
    (a wrong token, a token on one side only) is a ``CordtrioError`` naming the address
    on the first connection, and logged on later ones. A ``tls+tcp://`` address needs
    ``tls_ca_file`` (PEM: the router's certificate or its CA); ``tls_server_name`` is the
    name the certificate must carry (default: the address's host).
    """
    tls = client_tls(address, tls_ca_file, tls_server_name)
    try:
        sock = pynng.Pair1(recv_max_size=max_frame(max_packet),
                           recv_buffer_size=SOCKET_BUFFER, send_buffer_size=SOCKET_BUFFER,
                           reconnect_time_min=ms(reconnect_min),
                           reconnect_time_max=ms(reconnect_max), tls_config=tls)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng bus: cannot open a socket: {exc}") from exc
    try:
        bus = NngBus(address, sock, max_in_flight=max_in_flight, max_packet=max_packet,
                     heartbeat_interval=heartbeat_interval, token=token)
    except ValueError:
        sock.close()
        raise
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
                if bus.refused:
                    raise CordtrioError(f"nng bus: cannot use the bus at {address!r}: "
                                        f"{bus.refused}")
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
