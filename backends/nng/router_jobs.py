"""The router's job delivery: the job queues' consumers, local and remote.

A ``JobRequest`` published on ``sys.job.submit`` goes into its topic's queue
(``backends/job_queues.py``) and to one consumer of that topic with room: a worker's
``consume_jobs`` block in the router's process (a ``LocalJobInbox``) or on a client
connection (``_RemoteConsumer``: the connection and the client's ``cid``). A consumer that
goes away hands its unacknowledged jobs back; past ``max_redeliveries`` the router reports
a job's worker lost. Only the connection holding a job may publish its result or progress
(the holder rule). See ``docs/bus.md`` (*Job delivery*, *Security*).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import trio

from cordtrio.errors import ProtocolError
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    BusPacket,
    JobProgress,
    JobResult,
    decode_packet,
)

from ..job_queues import Assignment, Consumer, JobQueues, LostJob, worker_lost_result
from ..local_jobs import LocalJobInbox
from ._io import log
from .frames import FrameError
from .table import Changes

if TYPE_CHECKING:
    from .router_host import RouterHost
    from .table import _Peer


HELD_PAYLOADS: dict[str, type[JobResult] | type[JobProgress]] = {
    SUBJECT_RESULT: JobResult, SUBJECT_PROGRESS: JobProgress}
"""The packets only the connection holding their job may publish, by subject."""


@final
class _RemoteConsumer:
    """The handle of a job consumer on a client connection."""

    __slots__ = ("cid", "peer")

    def __init__(self, peer: _Peer, cid: int) -> None:
        self.peer = peer
        self.cid = cid


class JobDelivery:
    """The router's job queues (``queues``) and their consumers; ``room`` wakes the
    publishers of jobs waiting while the queues are full."""

    def __init__(self, router: RouterHost, *, max_redeliveries: int,
                 max_pending: int) -> None:
        self._router = router
        self.queues = JobQueues(max_redeliveries=max_redeliveries, max_pending=max_pending)
        self.room = Changes()
        self._local: set[LocalJobInbox] = set()

    # ------------------------------------------------------------------ publishing

    async def submit(self, job_id: str, topic: str, wire: bytes) -> None:
        """A job request published in the router's process: queued once there is room."""
        while self.queues.full:
            await self.room.wait()
            if self._router.closed:
                raise trio.ClosedResourceError("the nng router is closed")
        self.offer(job_id, topic, wire)

    def offer(self, job_id: str, topic: str, wire: bytes) -> None:
        job = self.queues.offer(job_id, topic, wire)
        if job is not None and job.holder is not None:
            handle = job.holder.handle
            if handle.__class__ is _RemoteConsumer:  # ``hand_out`` of this one job, inlined
                # (no ``room`` to notify: an offer queues or hands out, never takes a
                # queued job, and publishers wait for room only while the queues are full)
                self._router._conns.send(handle.peer,
                                         {"op": "job", "cid": handle.cid, "packet": wire})
            else:
                self.hand_out((Assignment(job.holder, job),))

    def cancel(self, job_id: str) -> None:
        self.queues.cancel(job_id)
        self.room.notify()

    async def publish_later(self, peer: _Peer, pid: int, subject: str, wire: bytes,
                            job_id: str, topic: str) -> None:
        """A client's job request that came while the queues were full: no ``puback``
        until there is room."""
        while self.queues.full and not peer.closed:
            await self.room.wait()
        if peer.closed:
            return  # the client sends it again on its next connection
        self.offer(job_id, topic, wire)
        self._router._ops.fan_out(peer, pid, subject, wire)

    # ------------------------------------------------------------------ consumers

    def add_local(self, topics: Collection[str], capacity: int) -> LocalJobInbox:
        inbox = LocalJobInbox(self._acknowledge)
        consumer, assignments = self.queues.add(topics, capacity, inbox)
        inbox.consumer = consumer
        self._local.add(inbox)
        self.hand_out(assignments)
        return inbox

    def remove_local(self, inbox: LocalJobInbox, consumer: Consumer) -> None:
        self._local.discard(inbox)
        inbox.close()
        if not self._router.closed:
            self.remove_consumer(consumer)

    def add_remote(self, peer: _Peer, cid: int, topics: Collection[str],
                   capacity: int) -> None:
        old_consumer = peer.consumers.pop(cid, None)
        if old_consumer is not None:
            self.remove_consumer(old_consumer)
        consumer, assignments = self.queues.add(topics, capacity, _RemoteConsumer(peer, cid))
        peer.consumers[cid] = consumer
        self._router._conns.send(peer, {"op": "jobsack", "cid": cid})
        self.hand_out(assignments)

    def remove_remote(self, peer: _Peer, cid: int) -> None:
        gone_consumer = peer.consumers.pop(cid, None)
        if gone_consumer is not None:
            self.remove_consumer(gone_consumer)

    def ack_remote(self, peer: _Peer, cid: int, job_id: str) -> None:
        consumer = peer.consumers.get(cid)
        if consumer is not None:
            self.hand_out(self.queues.ack(consumer, job_id))

    def ack_held(self, consumer: Consumer, job_id: str) -> None:
        """``ack_remote`` of the consumer found holding ``job_id`` (``holder_refusal``): a
        consumer gone since holds nothing, and acknowledges nothing."""
        self.hand_out(self.queues.ack(consumer, job_id))

    def _acknowledge(self, consumer: Consumer, job_id: str) -> None:
        if not self._router.closed:
            self.hand_out(self.queues.ack(consumer, job_id))

    def hand_out(self, assignments: Collection[Assignment]) -> None:
        if not assignments:  # an ack usually frees no job (and takes none from a queue:
            return           # no room for waiting publishers)
        todo = deque(assignments)
        while todo:
            a = todo.popleft()
            wire: bytes = a.job.item
            handle = a.consumer.handle
            if handle.__class__ is _RemoteConsumer:
                self._router._conns.send(handle.peer,
                                         {"op": "job", "cid": handle.cid, "packet": wire})
                continue
            assert isinstance(handle, LocalJobInbox)
            try:
                packet = decode_packet(wire)
            except ProtocolError as exc:  # from a client: it cannot run; drop the job
                self._router.dropped_frames += 1
                log.warning("nng router: dropped job %s, its packet does not decode: %s",
                            a.job.job_id, exc)
                todo.extend(self.queues.ack(a.consumer, a.job.job_id))
                continue
            handle.deliver(packet)
        if not self.queues.full:
            self.room.notify()

    def remove_consumer(self, consumer: Consumer) -> None:
        router = self._router
        assignments, lost = self.queues.remove(consumer)
        self.hand_out(assignments)
        if lost and router._nursery is not None and not router.closed:
            router._nursery.start_soon(self._report_lost, lost)

    async def _report_lost(self, lost: list[LostJob]) -> None:
        for job in lost:
            log.warning("nng router: job %s: its worker was lost %d times; reported as "
                        "failed", job.job_id, job.deliveries)
            trace_id = job.job_id.rpartition(":")[0]
            with contextlib.suppress(ProtocolError):
                trace_id = decode_packet(job.item).trace_id
            result = worker_lost_result(job.job_id, job.deliveries)
            with contextlib.suppress(trio.ClosedResourceError):
                await self._router.publish(SUBJECT_RESULT, BusPacket(
                    trace_id, "cordtrio-bus", datetime.now(UTC), PROTOCOL_VERSION, result))

    def end(self) -> None:
        """The router is closing: local consumers read what they have, then end."""
        for inbox in tuple(self._local):
            inbox.close()
        self.room.notify()

    # ------------------------------------------------------------------ the holder rule

    def holder_refusal(self, peer: _Peer, kind: type, subject: str, wire: bytes,
                       claimed: str, bare: bool = False) -> tuple[str, Any, Consumer | None]:
        """Why ``peer`` may not publish this result or progress (``kind``: the payload
        class its subject carries, ``HELD_PAYLOADS``; "" if it may): only the connection
        holding the job may (a job not held here is anybody's). With it, the packet as
        decoded for the check (None if refused; ``bare``: its payload alone, no packet
        built), which the caller may hand to a subscriber instead of decoding it again,
        and the consumer holding the job (None when no consumer of this connection holds
        it), whose acknowledgement the result may carry."""
        try:  # (small packets: a pointer to the output, not the output)
            packet: Any = decode_packet(wire, True) if bare else decode_packet(wire)
        except ProtocolError as exc:
            raise FrameError(f"a packet on {subject!r} does not decode: {exc}") from None
        payload = packet if bare else packet.payload
        if payload.__class__ is not kind and not isinstance(payload, kind):
            return f"not a {kind.__name__}", None, None
        job_id = payload.job_id  # type: ignore[attr-defined]
        if claimed and claimed != job_id:
            return f"the packet is about job {job_id}, the op says {claimed}", None, None
        job = self.queues._jobs.get(job_id)  # ``queues.get``
        if job is None:  # not held here: acknowledged already, or from before a restart
            return "", packet, None
        holder = job.holder
        if holder is not None:
            handle = holder.handle
            if handle.__class__ is _RemoteConsumer and handle.peer is peer:
                return "", packet, holder
        return f"job {job_id} is not held by this connection", None, None


__all__ = ["HELD_PAYLOADS", "JobDelivery"]
