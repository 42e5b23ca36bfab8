"""The client's subscriptions and publishes.

Every subscription is registered with the router under a client-chosen id (``sid``) with
the room its ``Inbox`` has; packets arrive as ``msg`` ops, never more than the room
granted, and the inbox grants more (``room`` ops, batched) as its consumer reads.
``publish`` sends the packet and waits for the router's ``puback``, which comes once
every subscriber has been handed the packet. A queue-group member that leaves hands what
it had not read back to the group (``bounce``), as it does with packets that arrive after
it left. See ``docs/bus.md`` (*Flow control and backpressure*).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio

from cordtrio.errors import ProtocolError
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

from ._io import log
from .client_host import Pending
from .frames import Op
from .inbox import Inbox

if TYPE_CHECKING:
    from .client_host import ClientHost

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
    ride: int = 0  # a result's: the consumer whose job it acknowledges (``JobChannel.ride``)
    done: trio.Event | None = field(default_factory=trio.Event)  # None: ``publish_now``'s
    acked: bool = False
    error: str | None = None


_JOB_SUBJECTS: dict[str, type[JobRequest | JobCancel | JobResult | JobProgress]] = {
    SUBJECT_SUBMIT: JobRequest, SUBJECT_CANCEL: JobCancel, SUBJECT_RESULT: JobResult,
    SUBJECT_PROGRESS: JobProgress}


def _job_fields(subject: str, packet: BusPacket) -> tuple[str, str]:
    """``(job id, topic)`` the router needs to see of a job-queue packet, else empty."""
    kind = _JOB_SUBJECTS.get(subject)
    payload = packet.payload
    if kind is None or (payload.__class__ is not kind and not isinstance(payload, kind)):
        return "", ""
    return payload.job_id, payload.topic if isinstance(payload, JobRequest) else ""


class Subscriptions:
    """A client's subscriptions (``subs``, by ``sid``) and the publishes waiting for their
    ``puback`` (``pubs``, by ``pid``); ``bounced`` counts the packets handed back to
    queue groups."""

    def __init__(self, bus: ClientHost, max_in_flight: int) -> None:
        self._bus = bus
        self.subs: dict[int, _Subscription] = {}
        self._subacks: dict[int, trio.Event] = {}
        self._left: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self.pubs: dict[int, _Publish] = {}
        self.room_due: dict[int, int] = {}
        self.bounced = 0  # bounces queued so far
        self._in_flight = trio.Semaphore(max_in_flight)

    # ------------------------------------------------------------------ publishing

    async def publish(self, subject: str, packet: BusPacket, wire: bytes) -> None:
        bus = self._bus
        job_id, topic = _job_fields(subject, packet)
        bus._check_open()
        in_flight = self._in_flight
        try:  # a free slot is taken without a schedule point: the puback is one anyway
            in_flight.acquire_nowait()
        except trio.WouldBlock:
            await in_flight.acquire()
        try:
            bus._check_open()
            pid = next(bus._ids)
            # a worker's result acknowledges its job: no ``ack`` op of its own
            ride = bus._jobs.ride(job_id) if subject == SUBJECT_RESULT and job_id else 0
            pub = _Publish(subject, wire, job_id, topic, ride)
            self.pubs[pid] = pub
            bus._link.queue(Pending("pub", pid))
            try:
                await pub.done.wait()  # type: ignore[union-attr]
            finally:
                self.pubs.pop(pid, None)
                if ride and (pub.error is not None or not pub.acked):
                    bus._jobs.unride(ride, job_id)
        finally:
            in_flight.release()
        if pub.error is not None:
            raise ProtocolError(f"publish {subject!r}: the router rejected the packet: "
                                f"{pub.error}")
        if not pub.acked:
            raise trio.ClosedResourceError(f"publish {subject!r}: the nng bus was closed")

    def publish_now(self, subject: str, packet: BusPacket, wire: bytes) -> bool:
        """``publish`` of a worker's result for a job received here (its ``pub`` carries
        the job's acknowledgement) without waiting for the ``puback``: queued, True; the
        ``puback`` settles it (``_settle``). False, having done nothing, for any other
        packet or with every in-flight slot taken: then await ``publish``."""
        bus = self._bus
        payload = packet.payload  # ``_job_fields`` of a result, without the call
        if subject != SUBJECT_RESULT or bus.closed or (
                payload.__class__ is not JobResult and not isinstance(payload, JobResult)):
            return False
        job_id = payload.job_id
        if not job_id:
            return False
        try:
            self._in_flight.acquire_nowait()
        except trio.WouldBlock:
            return False
        ride = bus._jobs.ride(job_id, True)
        if not ride:
            self._in_flight.release()
            return False
        pid = next(bus._ids)
        self.pubs[pid] = _Publish(subject, wire, job_id, "", ride, None)
        bus._link.queue(Pending("pub", pid))
        return True

    def _settle(self, pid: int, pub: _Publish) -> None:
        """A ``publish_now`` result is out (its job acknowledged by the router), refused
        (its job unacknowledged again: the router hands it to another worker once this
        connection is reset, as after a ``publish`` that raised), or the bus closed."""
        self.pubs.pop(pid, None)
        self._in_flight.release()
        jobs = self._bus._jobs
        if pub.acked and pub.error is None:
            jobs.landed(pub.ride, pub.job_id)
            return
        jobs.unride(pub.ride, pub.job_id)
        log.error("nng bus: the result of job %s was not published: %s", pub.job_id,
                  f"the router rejected the packet: {pub.error}" if pub.acked
                  else "the nng bus was closed")

    def puback(self, pid: int, error: object) -> None:
        pub = self.pubs.get(pid)
        if pub is not None:
            pub.error = error if isinstance(error, str) else None
            pub.acked = True
            if pub.done is None:
                self._settle(pid, pub)
            else:
                pub.done.set()

    def pending_pubs(self) -> Iterator[Pending]:
        """The publishes still unconfirmed, to send again on a new connection."""
        return (Pending("pub", pid) for pid in sorted(self.pubs))

    def resolve(self, item: Op | Pending) -> Op | None:
        """The op an outbox entry stands for now (None: nothing to send any more)."""
        if isinstance(item, dict):
            return item
        if item.kind == "pub":
            pub = self.pubs.get(item.id)
            if pub is None:
                return None  # given up (cancelled) before it was sent
            op: Op = {"op": "pub", "pid": item.id, "subject": pub.subject, "packet": pub.wire}
            if pub.job_id:
                op["jid"] = pub.job_id
                if pub.topic:
                    op["topic"] = pub.topic
                if pub.ride and self._bus._jobs.carry(pub.ride, pub.job_id):
                    op["ack"] = pub.ride
            return op
        room = self.room_due.pop(item.id, 0)
        return {"op": "room", "sid": item.id, "n": room} if room else None

    # ------------------------------------------------------------------ subscriptions

    def add(self, subject: str, queue: str, max_buffer: int | float) -> tuple[Inbox, trio.Event]:
        """A new subscription, registered with the router; the event is set by its
        ``suback``."""
        bus = self._bus
        inbox = Inbox(max_buffer)
        sub = _Subscription(next(bus._ids), subject, queue, inbox)
        inbox.on_room = partial(self._grant_room, sub.sid)
        inbox.on_close = partial(self._unsubscribe, sub)
        acked = trio.Event()
        self.subs[sub.sid] = sub
        self._subacks[sub.sid] = acked
        bus._link.queue(sub.op())
        return inbox, acked

    def suback(self, sid: int) -> None:
        acked = self._subacks.get(sid)
        if acked is not None:
            acked.set()

    def sub_ops(self) -> Iterator[Op]:
        """Every subscription's ``sub`` op, with fresh room, for a new connection."""
        self.room_due.clear()
        return (sub.op() for sub in self.subs.values())

    def _unsubscribe(self, sub: _Subscription, leftover: list[BusPacket]) -> None:
        """The subscriber closed its channel (or left its block)."""
        bus = self._bus
        self._subacks.pop(sub.sid, None)
        self.room_due.pop(sub.sid, None)
        if self.subs.pop(sub.sid, None) is None or bus.closed:
            return
        if bus._link.pipe_id is not None:
            bus._link.queue({"op": "unsub", "sid": sub.sid})
        if sub.queue:
            self._left[sub.sid] = (sub.subject, sub.queue)
            if len(self._left) > LEFT_GROUPS:
                self._left.popitem(last=False)
            for packet in leftover:
                self._bounce(sub.subject, sub.queue, encode_packet(packet))

    def _bounce(self, subject: str, queue: str, wire: bytes) -> None:
        self.bounced += 1
        self._bus._link.queue({"op": "bounce", "subject": subject, "queue": queue,
                               "packet": wire})

    def _grant_room(self, sid: int, n: int) -> None:
        if sid not in self.subs:
            return
        if sid not in self.room_due:
            self.room_due[sid] = 0
            self._bus._link.queue(Pending("room", sid))
        self.room_due[sid] += n

    def deliver(self, sid: int, wire: bytes) -> None:
        sub = self.subs.get(sid)
        if sub is None:  # left meanwhile: a queue group's packet goes back to the group
            left = self._left.get(sid)
            if left is not None:
                self._bounce(*left, wire)
            return
        try:
            packet = decode_packet(wire)
        except ProtocolError as exc:
            self._bus._garbage(f"packet for {sub.subject!r}", exc)
            sub.inbox.arrived()
            sub.inbox.replenish()
            return
        sub.inbox.put(packet)

    def end(self) -> None:
        """The bus is closing: publishes and subscribes waiting give up, subscribers read
        what is buffered, then ``EndOfChannel``."""
        for pid, pub in tuple(self.pubs.items()):
            if pub.done is None:
                self._settle(pid, pub)
            else:
                pub.done.set()
        for acked in self._subacks.values():
            acked.set()
        for sub in self.subs.values():
            sub.inbox.end()


__all__ = ["LEFT_GROUPS", "MAX_IN_FLIGHT", "Subscriptions"]
