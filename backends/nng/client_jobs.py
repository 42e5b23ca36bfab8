"""The client's job consumers: a worker's ``consume_jobs`` blocks on an nng bus.

Each consumer is registered with the router under a client-chosen id (``cid``) with its
topics and capacity; jobs arrive as ``job`` ops and are acknowledged with ``ack``. When
the connection is reset the router has already given the consumer's jobs to others: the
jobs received on it and not acknowledged go to the inbox's ``on_lost``. On the next
connection the consumers are registered again. See ``docs/bus.md`` (*Job delivery*).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from functools import partial
from typing import TYPE_CHECKING

import trio

from cordtrio.errors import ProtocolError
from cordtrio.protocol import JobRequest, decode_packet

from ._io import log
from .frames import FrameError, Op
from .inbox import JobChannel

if TYPE_CHECKING:
    from .client_host import ClientHost


class JobConsumers:
    """A client's job consumers (``consumers``, by ``cid``)."""

    def __init__(self, bus: ClientHost) -> None:
        self._bus = bus
        self.consumers: dict[int, JobChannel] = {}
        self._jobacks: dict[int, trio.Event] = {}

    def add(self, topics: Collection[str], capacity: int) -> tuple[JobChannel, trio.Event]:
        """A new consumer, registered with the router; the event is set by its
        ``jobsack``."""
        bus = self._bus
        names = frozenset(topics)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ValueError(f"consume_jobs: give at least one topic, got {topics!r}")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"consume_jobs: capacity must be an int >= 1, got {capacity!r}")
        bus._check_open()
        inbox = JobChannel(next(bus._ids), names, capacity)
        inbox.on_ack = partial(self._ack_job, inbox.cid)
        inbox.on_close = partial(self._stop_consuming, inbox.cid)
        acked = trio.Event()
        self.consumers[inbox.cid] = inbox
        self._jobacks[inbox.cid] = acked
        bus._link.queue(self._jobs_op(inbox))
        return inbox, acked

    def jobsack(self, cid: int) -> None:
        acked = self._jobacks.get(cid)
        if acked is not None:
            acked.set()

    @staticmethod
    def _jobs_op(inbox: JobChannel) -> Op:
        return {"op": "jobs", "cid": inbox.cid, "topics": sorted(inbox.topics),
                "cap": inbox.capacity}

    def jobs_ops(self) -> Iterator[Op]:
        """Every consumer's ``jobs`` op, for a new connection."""
        return (self._jobs_op(inbox) for inbox in self.consumers.values())

    def ride(self, job_id: str, queued: bool = False) -> int:
        """The result of ``job_id`` is being published: the ``cid`` of the consumer that
        received it (its ``pub`` carries the acknowledgement, ``JobChannel.ride``), 0 if
        none did."""
        for cid, inbox in self.consumers.items():
            if inbox.ride(job_id, queued):
                return cid
        return 0

    def landed(self, cid: int, job_id: str) -> None:
        inbox = self.consumers.get(cid)
        if inbox is not None:
            inbox.landed(job_id)

    def carry(self, cid: int, job_id: str) -> bool:
        """The result's ``pub`` is being written: True if it carries the acknowledgement of
        ``job_id`` (still riding: not acknowledged meanwhile, nor taken back by a reset of
        the connection), ``JobChannel.carry``."""
        inbox = self.consumers.get(cid)
        return inbox is not None and inbox.carry(job_id)

    def unride(self, cid: int, job_id: str) -> None:
        inbox = self.consumers.get(cid)
        if inbox is not None:
            inbox.unride(job_id)

    def _ack_job(self, cid: int, job_id: str) -> None:
        link = self._bus._link
        if cid in self.consumers and link.pipe_id is not None:
            link.queue({"op": "ack", "cid": cid, "jid": job_id})

    def _stop_consuming(self, cid: int) -> None:
        bus = self._bus
        self._jobacks.pop(cid, None)
        if self.consumers.pop(cid, None) is None or bus.closed:
            return
        if bus._link.pipe_id is not None:
            bus._link.queue({"op": "unjobs", "cid": cid})

    def deliver(self, cid: int, wire: bytes) -> None:
        inbox = self.consumers.get(cid)
        if inbox is None:
            return  # it left: the router hands the job to another consumer
        try:
            packet = decode_packet(wire)
        except ProtocolError as exc:
            self._bus._garbage(f"job for consumer {cid}", exc)
            return
        payload = packet.payload
        if not isinstance(payload, JobRequest):
            self._bus._garbage(f"job for consumer {cid}",
                               FrameError(f"not a JobRequest: {type(payload).__name__}"))
            return
        inbox.put(payload.job_id, packet)

    def reset(self) -> None:
        """The connection is gone, and the router took back the jobs delivered on it."""
        for inbox in tuple(self.consumers.values()):
            lost = inbox.reset()
            if lost:
                log.warning("nng bus: the connection to %s was reset; %d job(s) received "
                            "on it go to another worker", self._bus.address, len(lost))

    def end(self) -> None:
        """The bus is closing: consumers waiting give up, inboxes end."""
        for acked in self._jobacks.values():
            acked.set()
        for inbox in self.consumers.values():
            inbox.end()


__all__ = ["JobConsumers"]
