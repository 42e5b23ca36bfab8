"""In-memory bus: subjects, fan-out subscribers and queue groups over Trio memory channels.

* A subscriber without a queue gets every packet published on its subject.
* Subscribers sharing a queue name on one subject form a group that gets each packet once:
  round robin, skipping members whose buffer is full; only when every member is full does
  ``publish`` wait for the next one in turn. That wait is the backpressure: a slow consumer
  slows its publishers down instead of growing a buffer without bound. A plain subscriber
  with a full buffer makes ``publish`` wait too.
* Subjects match exactly, except that a subscription subject ending in ``>`` (``"sys.job.>"``
  or just ``">"``) matches every subject that starts with what precedes the ``>`` and is
  longer than it, like NATS' full wildcard. ``*`` has no special meaning.
* ``listen`` is a subscription that is a callback, called from within ``publish`` (no
  buffer, no task: the engine routes results into run mailboxes with it). It never makes
  ``publish`` wait; an exception it raises is logged, not raised in the publisher. One
  that says it reads a packet's payload alone (``on_payload``) gets a worker's job result
  bare, with no packet built, while it is its subject's only listener.
* A subscriber whose channel is closed (it left its ``subscribe`` block, or closed the
  receive channel itself) is dropped silently; publishing to a subject nobody listens to is
  not an error.

Job requests (SPEC §13) are delivered at least once besides: a ``JobRequest`` published on
``sys.job.submit`` goes into its topic's job queue (``backends/job_queues.py``) and to one
worker that consumes that topic with ``consume_jobs``; it waits there while no such worker
has room, and a worker that leaves without acknowledging a job hands it back to the queue
for the next one. Plain subscribers of ``sys.job.submit`` still see every request (a
monitoring tap), but taking a job is ``consume_jobs``' business. A ``JobCancel`` on
``sys.job.cancel`` drops a job still queued. While the job queues alone take
``sys.job.submit``, the engine hands them each request bare (``submit_now``): no packet is
built unless a consumer that is not a cordtrio worker takes the job (it gets the packet,
built then, as it would have been published).

By default the packet *object* is handed to every subscriber, so receivers must treat packets
as immutable. ``MemoryBus(codec=True)`` instead encodes each packet once with
``encode_packet`` and gives each subscriber its own ``decode_packet`` copy, which exercises
the wire format in tests.

Who is subscribed to what, and how a packet reaches them with backpressure, lives in
``subscribers.py`` (``Subscribers``, this bus's base class); this module is the bus's API
and the job hand-over.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import trio
from trio.lowlevel import checkpoint_if_cancelled

from cordtrio.errors import ProtocolError
from cordtrio.ports import OffersPublishNow
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    decode_packet,
    encode_packet,
)

from ..job_queues import (
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REDELIVERIES,
    Assignment,
    Consumer,
    JobQueues,
    LostJob,
    QueuedJob,
    worker_lost_result,
)
from ..local_jobs import LocalJobInbox
from .subscribers import Callback, Subscribers, Wait

DEFAULT_MAX_BUFFER = 1024

log = logging.getLogger("cordtrio.bus")


class MemoryBus(Subscribers, OffersPublishNow):
    """A process-local bus implementing the ``JobBus`` port (see the module docstring).

    ``max_redeliveries`` and ``max_pending`` configure the job queues (``jobs``, whose
    counters serve monitoring): see ``backends/job_queues.py``.
    """

    def __init__(
        self,
        *,
        codec: bool = False,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        super().__init__(codec)  # the subscription tables (``subscribers.py``)
        self.jobs = JobQueues(max_redeliveries=max_redeliveries, max_pending=max_pending)
        self._room = trio.lowlevel.ParkingLot()  # publishers waiting for queue space
        # Subjects whose one listener is a ``listen`` callback (one engine's job results):
        # ``publish`` calls that callback straight away (as ``Callback.send_nowait`` does,
        # one call fewer). Rebuilt whenever anyone (un)subscribes, with what ``publish_now``
        # may do on its own: those callbacks but ``sys.job.cancel``'s (a cancel also drops a
        # queued job), and whether the job queues alone take ``sys.job.submit``. Neither
        # with ``codec``: every packet is then encoded, by ``publish``.
        self._direct: dict[str, Callable[[BusPacket], None]] = {}
        self._direct_now: dict[str, Callable[[BusPacket], None]] = {}
        self._jobs_alone = not codec
        self._result_now: Callable[[BusPacket], None] | None = None
        """``sys.job.result``'s callback in ``_direct_now``."""
        self._result_bare: Callable[[Any], None] | None = None
        """That callback's ``on_payload``, when it has one: a worker's ``report_now``
        hands it the bare result, no packet built."""

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Deliver ``packet`` to the subject's subscribers.

        A cancellation point: if cancelled before delivery nothing is delivered. It is a
        schedule point only when it waits, while a receiving buffer is full; if cancelled
        during that wait, subscribers served before it already have the packet.
        """
        await checkpoint_if_cancelled()
        if not isinstance(packet, BusPacket):
            raise ProtocolError(f"publish {subject!r}: expected a BusPacket, "
                                f"got {type(packet).__name__}")
        wire = encode_packet(packet) if self._codec else None
        payload = packet.payload
        if subject == SUBJECT_SUBMIT and isinstance(payload, JobRequest):
            jobs = self.jobs
            while jobs.pending >= jobs.max_pending:  # ``jobs.full``, on every job
                await self._room.park()
            # (an offer never frees space: no unpark)
            self._queue_job(payload, packet if wire is None else wire)
        elif subject == SUBJECT_CANCEL and isinstance(payload, JobCancel) and \
                self.jobs.cancel(payload.job_id):
            self._hand_out(())  # a queued job dropped: room for a waiting publisher
        direct = self._direct.get(subject)
        if direct is not None:
            try:
                direct(packet if wire is None else decode_packet(wire))
            except Exception:
                log.exception("a bus listener failed on a packet")
            return
        # Everyone with room gets the packet now, without a schedule point; only then does
        # the publisher wait, in turn, for those whose buffers are full.
        listeners = self._exact.get(subject)
        if listeners is None and not self._wildcards:
            return  # no subscriber (a job request, taken by the job queues alone)
        waits: list[Wait] = []
        if listeners is not None:
            self._offer(subject, listeners, packet, wire, self._exact, waits)
        if self._wildcards:
            for prefix, wild in tuple(self._wildcards.items()):
                if len(subject) > len(prefix) and subject.startswith(prefix):
                    self._offer(prefix, wild, packet, wire, self._wildcards, waits)
        if waits:
            await self._wait_for_room(waits, packet, wire)

    def publish_now(self, subject: str, packet: BusPacket) -> bool:
        """``publish`` without awaiting it (no cancellation check) for the packets of a job
        step, when nothing can make it wait: a job request the job queues alone take (they
        have room, nobody subscribes to its subject; the engine hands such a request bare
        instead, ``submit_now``), or a packet a ``listen`` callback alone takes (a job
        result for the engine). False, having done nothing,
        for anything else: then await ``publish``."""
        if packet.__class__ is not BusPacket:
            return False
        if subject == SUBJECT_SUBMIT:  # a job request: the job queues' when they alone take it
            if not self._jobs_alone:
                return False
            request = packet.payload
            if request.__class__ is not JobRequest:
                return False
            jobs = self.jobs
            if jobs.pending and jobs.pending >= jobs.max_pending:  # ``jobs.full``: none queued,
                return False                                         # the usual case
            # ``_queue_job``, inlined: this runs for every job
            job = jobs.offer(request.job_id, request.topic, packet)  # type: ignore[union-attr]
            if job is not None:
                job.holder.handle.deliver(packet)  # type: ignore[union-attr]
            return True
        direct = self._direct_now.get(subject)  # (never ``sys.job.submit``'s)
        if direct is None:
            return False
        try:
            direct(packet)
        except Exception:
            log.exception("a bus listener failed on a packet")
        return True

    def submit_now(self, request: JobRequest, trace_id: str, created_at: datetime,
                   sender_id: str) -> bool:
        """``publish_now(SUBJECT_SUBMIT, BusPacket(trace_id, sender_id, created_at,
        PROTOCOL_VERSION, request))`` with no packet built (the engine's every job): the
        job queues keep the request bare, the packet's other fields beside it
        (``QueuedJob``), and a worker that takes jobs bare (``LocalJobInbox.bare_jobs``) is
        handed the job itself; anyone else is handed the packet, built then. Only while the
        job queues alone take job requests (``publish_now``'s rule: nobody else could see
        the packet); False, having done nothing, otherwise."""
        if not self._jobs_alone:
            return False
        jobs = self.jobs
        if jobs.pending and jobs.pending >= jobs.max_pending:  # ``jobs.full``: none queued,
            return False                                         # the usual case
        job = jobs.offer(request.job_id, request.topic, request, trace_id, sender_id,
                         created_at)
        if job is not None:
            inbox: LocalJobInbox = job.holder.handle  # type: ignore[union-attr]
            inbox.deliver(job if inbox.bare_jobs else _packet_of(job))
        return True

    def _queue_job(self, request: JobRequest, item: BusPacket | bytes) -> None:
        """Offer a job request to the job queues; one handed to a waiting consumer at once
        goes straight into its inbox. ``item`` is what the queues keep: the packet, or its
        encoding when the bus encodes (each delivery then decodes its own copy)."""
        job = self.jobs.offer(request.job_id, request.topic, item)
        if job is not None:
            holder = job.holder
            assert holder is not None  # the consumer the job was handed to
            holder.handle.deliver(_deliverable(item))

    @asynccontextmanager
    async def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int | float = DEFAULT_MAX_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[BusPacket]]:
        """Subscribe for the duration of the block; yields the receive channel.

        The subscription is active when the block starts. Leaving the block unsubscribes
        and closes the channel. ``max_buffer`` packets may wait unread (``math.inf``:
        unbounded, no backpressure) before publishers wait.
        """
        if max_buffer != math.inf and (not isinstance(max_buffer, int) or max_buffer < 0):
            raise ValueError(f"subscribe {subject!r}: max_buffer must be an int >= 0 or inf")
        send, receive = trio.open_memory_channel[BusPacket](max_buffer)
        table, key = self._table_for(subject)
        self._add(table, key, queue, send)
        try:
            with receive:
                yield receive
        finally:
            self._remove(table, key, queue, send)
            send.close()

    listens_for_payloads = True
    """``listen`` takes ``on_payload`` (``ports.DirectBus``). False in a subclass that
    overrides ``listen`` (to watch or wrap what its callbacks get: they then get every
    result as a packet, as that ``listen`` expects)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "listen" in cls.__dict__:
            cls.listens_for_payloads = False

    @asynccontextmanager
    async def listen(
        self, subject: str, queue: str, callback: Callable[[BusPacket], None], *,
        on_payload: Callable[[Any], None] | None = None,
    ) -> AsyncIterator[None]:
        """Call ``callback(packet)`` from ``publish`` for the duration of the block, as a
        subscriber of ``subject`` (in queue group ``queue``: ``""`` for none) would receive
        ``packet`` (``DirectBus``). ``on_payload(payload)``, when given, must do what
        ``callback`` does with a packet of that payload (it reads nothing else of it): a
        worker's result then reaches it bare, with no packet built for it, while this
        callback is the subject's only listener (``_report_now``)."""
        send = Callback(callback, on_payload)
        table, key = self._table_for(subject)
        self._add(table, key, queue, send)  # type: ignore[arg-type]
        try:
            yield
        finally:
            self._remove(table, key, queue, send)  # type: ignore[arg-type]

    @asynccontextmanager
    async def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AsyncIterator[LocalJobInbox]:
        """Take jobs of ``topics`` for the duration of the block, at most ``capacity``
        unacknowledged at once (see ``JobInbox``). Leaving the block hands every job not
        acknowledged back to its queue (or, past the redelivery bound, reports it lost)."""
        inbox = LocalJobInbox(self._acknowledge, self._report_now if self._reports_now()
                              else None)
        consumer, assignments = self.jobs.add(topics, capacity, inbox)
        inbox.consumer = consumer
        self._hand_out(assignments)
        try:
            yield inbox
        finally:
            inbox.close()
            assignments, lost = self.jobs.remove(consumer)
            self._hand_out(assignments)
            if lost:
                with trio.CancelScope(shield=True):
                    await self._report_lost(lost)

    # ------------------------------------------------------------------------ internals

    def _reports_now(self) -> bool:
        """Whether a worker's inbox may publish results with ``_report_now``: not on a
        bus that changes ``publish`` or ``publish_now`` (it must see every result)."""
        cls = type(self)
        return cls.publish is MemoryBus.publish and cls.publish_now is MemoryBus.publish_now

    def _report_now(self, consumer: Consumer, result: JobResult) -> bool:
        """A worker's ``result``, handed bare to the ``on_payload`` of the one ``listen``
        callback of ``sys.job.result`` (the engine's), and its job acknowledged, in one
        call (``LocalJobInbox.report_now``, every job): no packet is built, since no one
        would read more than its payload. False, having done nothing, when anyone else
        (or no one) listens, or the callback takes packets alone: then the worker
        publishes a packet and acknowledges the job."""
        deliver = self._result_bare
        if deliver is None:
            return False
        try:
            deliver(result)
        except Exception:
            log.exception("a bus listener failed on a packet")
        assignments = self.jobs.ack(consumer, result.job_id)
        if assignments:  # none: nothing was queued, so no publisher waits for room
            self._hand_out(assignments)
        return True

    def _acknowledge(self, consumer: Consumer, job_id: str) -> None:
        assignments = self.jobs.ack(consumer, job_id)
        if assignments:  # none: nothing was queued, so no publisher waits for room
            self._hand_out(assignments)

    def _hand_out(self, assignments: Collection[Assignment]) -> None:
        for a in assignments:
            inbox: LocalJobInbox = a.consumer.handle
            job = a.job
            inbox.deliver(_deliverable(job.item) if job.item.__class__ is not JobRequest
                          else job if inbox.bare_jobs else _packet_of(job))
        if self._room and not self.jobs.full:
            self._room.unpark_all()

    async def _report_lost(self, lost: list[LostJob]) -> None:
        for job in lost:
            trace_id = job.trace_id if job.item.__class__ is JobRequest \
                else _deliverable(job.item).trace_id
            log.warning("job %s: its worker was lost %d times; reported as failed",
                        job.job_id, job.deliveries)
            result = worker_lost_result(job.job_id, job.deliveries)
            await self.publish(SUBJECT_RESULT, BusPacket(
                trace_id, "cordtrio-bus", datetime.now(UTC), PROTOCOL_VERSION, result))

    def _refresh_direct(self) -> None:
        """Find the subjects ``publish`` may hand straight to a callback: exactly one
        listener, a ``listen`` callback in a queue group, and no wildcard subscription
        that also matches."""
        direct: dict[str, Callable[[BusPacket], None]] = {}
        for key, listeners in self._exact.items():
            if listeners.plain or len(listeners.groups) != 1:
                continue
            (group,) = listeners.groups.values()
            if len(group.members) != 1 or not isinstance(group.members[0], Callback):
                continue
            if any(len(key) > len(prefix) and key.startswith(prefix)
                   for prefix in self._wildcards):
                continue
            direct[key] = group.members[0].callback
        self._direct = direct
        if self._codec:
            return
        self._direct_now = {key: call for key, call in direct.items()
                            if key not in (SUBJECT_SUBMIT, SUBJECT_CANCEL)}
        self._jobs_alone = SUBJECT_SUBMIT not in self._exact and not self._wildcards
        self._result_now = self._direct_now.get(SUBJECT_RESULT)
        self._result_bare = None
        if self._result_now is not None:
            (group,) = self._exact[SUBJECT_RESULT].groups.values()
            self._result_bare = group.members[0].on_payload  # type: ignore[attr-defined]


def _deliverable(item: BusPacket | bytes) -> BusPacket:
    """A queued job's packet for one delivery: the packet itself, or a copy decoded from
    its encoding when the bus encodes packets."""
    return item if isinstance(item, BusPacket) else decode_packet(item)


def _packet_of(job: QueuedJob) -> BusPacket:
    """The packet of a job request kept bare (``MemoryBus.submit_now``), for a consumer
    that takes packets: the one the engine would have published."""
    return BusPacket(job.trace_id, job.sender_id, job.created_at, PROTOCOL_VERSION, job.item)


__all__ = ["DEFAULT_MAX_BUFFER", "MemoryBus"]
