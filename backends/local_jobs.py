"""A worker's job inbox in the process that hosts the job queues (``MemoryBus``, the nng
router's own process): the ``JobInbox`` port over an unbounded buffer. Unbounded is safe:
the job queues never hand a consumer more than its capacity of unacknowledged jobs. The
host never takes a job back from a consumer in its own process (it leaves only by leaving
its ``consume_jobs`` block), so ``on_lost`` is never called here.

Not a Trio memory channel, for the same reason as the engine's run ``Mailbox``: a job is
handed straight to a waiting reader (``trio.lowlevel.reschedule``), and a reader finding the
inbox empty waits at once — no ``WouldBlock`` raised and caught, no extra checkpoint, on
every job a worker takes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import outcome
import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from cordtrio.protocol import BusPacket, JobResult

from .job_queues import Consumer, QueuedJob


class LocalJobInbox:
    """The ``JobInbox`` of a local consumer; ``acknowledge(consumer, job_id)`` is the
    host's: it forgets the job and fills the freed slot. Several tasks may receive at once
    (a worker's slots): the one waiting longest gets the next job."""

    receive_takes_ready_job = True
    """``receive`` takes a buffered job without a schedule point (it is only a cancellation
    point then), so a reader may call it without trying ``receive_nowait`` first."""

    bare_job_type = QueuedJob
    """What ``receive`` returns for a job request kept bare (``bare_jobs``)."""

    def __init__(self, acknowledge: Callable[[Consumer, str], None],
                 report: Callable[[Consumer, JobResult], bool] | None = None) -> None:
        self._acknowledge = acknowledge
        self._report = report
        self._jobs: deque[Any] = deque()
        self._buffer = self._jobs.append
        self.deliver: Callable[[Any], None] = self._buffer
        """``deliver(packet)``: hand the consumer a job (the host's side): a packet, or
        the host's job itself for a reader that takes it bare (``bare_jobs``). The buffer's own
        ``append`` while no reader waits and the inbox is open (every job a busy worker
        is handed: no frame of the inbox's own); ``_hand_to_reader`` while readers wait;
        a no-op once closed (the inbox is leaving: its consumer is removed right after,
        which hands its jobs on)."""
        self.ready = self._jobs
        """The jobs delivered and not yet received, oldest first. A reader may take one
        with ``ready.popleft()`` after ``trio.lowlevel.checkpoint_if_cancelled()``, which
        is what ``receive`` does with a buffered job (two frames fewer on every job a
        worker finds waiting); when it is empty, ``receive`` waits (or ends)."""
        self.bare_jobs = False
        """Set by a reader that takes a job request kept bare (``MemoryBus.submit_now``) as
        the host's job itself: its ``item`` the ``JobRequest``, its ``trace_id`` that of
        the packet it was not put in (a cordtrio ``Worker``: no packet built for the
        jobs it is handed). Else every job is handed over in a packet."""
        self._readers: deque[Task] = deque()  # waiting readers, longest waiting first
        self._closed = False
        self._consumer: Consumer | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.ack: Callable[[str], None] = _no_consumer
        """``ack(job_id)``: the job's result is published. The host's ``acknowledge`` with
        the consumer bound (once it is set), called without a frame of its own."""
        self.report_now: Callable[[JobResult], bool] | None = None
        """``report_now(result)``, on a host that offers it: hand a job's result to the
        one listener of results, bare (no packet), and acknowledge its job in one call,
        without awaiting; False, having done nothing, when the host cannot (then publish
        it in a packet and ``ack``). The host's ``report`` with the consumer bound, once
        it is set."""

    @property
    def consumer(self) -> Consumer | None:
        """The host's consumer this inbox serves (set by the host once it has one)."""
        return self._consumer

    @consumer.setter
    def consumer(self, consumer: Consumer | None) -> None:
        self._consumer = consumer
        self.ack = _no_consumer if consumer is None else partial(self._acknowledge, consumer)
        report = self._report
        self.report_now = None if consumer is None or report is None \
            else partial(report, consumer)

    def _hand_to_reader(self, packet: BusPacket) -> None:
        """``deliver`` while readers wait: the one waiting longest gets ``packet``; the
        buffer takes the next job once none waits."""
        readers = self._readers
        reschedule(readers.popleft(), outcome.Value(packet))
        if not readers:
            self.deliver = self._buffer

    def receive_nowait(self) -> BusPacket | QueuedJob:
        """A buffered job (a packet, or with ``bare_jobs`` maybe the host's job);
        ``trio.WouldBlock`` when there is none (``trio.EndOfChannel`` once closed and
        empty)."""
        if self._jobs:
            return self._jobs.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def receive(self) -> Coroutine[Any, Any, BusPacket | QueuedJob]:
        """The next job (await it at once): a buffered one (a cancellation point, not a
        schedule point), else wait for one; ``trio.EndOfChannel`` once closed and empty.

        Not a coroutine of its own, like the engine's ``Mailbox.wait``: it returns Trio's
        wait itself (one coroutine fewer on every job a worker waits for), so the reader is
        registered as it is called, and must await the result straight away."""
        if self._jobs or self._closed:
            return self._take()
        task = current_task()
        readers = self._readers
        readers.append(task)
        self.deliver = self._hand_to_reader

        def abort(_: object) -> Abort:
            readers.remove(task)  # (a scan, only when a waiting reader is cancelled)
            if not readers and not self._closed:
                self.deliver = self._buffer
            return Abort.SUCCEEDED

        return wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def _take(self) -> BusPacket | QueuedJob:
        await checkpoint_if_cancelled()
        return self.receive_nowait()  # nothing ran since the check: still there

    def close(self) -> None:
        """No more jobs: a reader gets what is buffered, then ``EndOfChannel`` (readers
        waiting now get it at once)."""
        self._closed = True
        self.deliver = _drop
        readers, self._readers = self._readers, deque()
        for reader in readers:
            reschedule(reader, outcome.Error(trio.EndOfChannel()))

    def __aiter__(self) -> LocalJobInbox:
        return self

    async def __anext__(self) -> BusPacket | QueuedJob:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def _drop(packet: BusPacket) -> None:
    """``deliver`` once closed: the job is dropped here (its consumer is removed next,
    which hands every job it held on)."""


def _no_consumer(job_id: str) -> None:
    """``ack`` before the host set the consumer: nothing was delivered to acknowledge."""


__all__ = ["LocalJobInbox"]
