"""A worker's job inbox in the process that hosts the job queues (``MemoryBus``, the nng
router's own process): the ``JobInbox`` port over an unbounded memory channel. Unbounded is
safe: the job queues never hand a consumer more than its capacity of unacknowledged jobs.
The host never takes a job back from a consumer in its own process (it leaves only by
leaving its ``consume_jobs`` block), so ``on_lost`` is never called here."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from cordtrio.protocol import BusPacket

from .job_queues import Consumer


class LocalJobInbox:
    """The ``JobInbox`` of a local consumer; ``acknowledge(consumer, job_id)`` is the
    host's: it forgets the job and fills the freed slot."""

    def __init__(self, acknowledge: Callable[[Consumer, str], None]) -> None:
        self._acknowledge = acknowledge
        self._send, self._receive = trio.open_memory_channel[BusPacket](math.inf)
        self.consumer: Consumer | None = None
        self.on_lost: Callable[[str], None] | None = None
        # the channel's own methods: no coroutine of ours in between, on every job
        self.receive: Callable[[], Awaitable[BusPacket]] = self._receive.receive
        self.receive_nowait: Callable[[], BusPacket] = self._receive.receive_nowait

    def ack(self, job_id: str) -> None:
        if self.consumer is not None:
            self._acknowledge(self.consumer, job_id)

    def deliver(self, packet: BusPacket) -> None:
        """Hand the consumer a job (the host's side). A closed inbox is leaving: its
        consumer is removed right after, which hands its jobs on."""
        try:  # noqa: SIM105 (not contextlib.suppress: this is on every job's path)
            self._send.send_nowait(packet)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def close(self) -> None:
        """No more jobs: a reader gets what is buffered, then ``EndOfChannel``."""
        self._send.close()

    def __aiter__(self) -> LocalJobInbox:
        return self

    async def __anext__(self) -> BusPacket:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


__all__ = ["LocalJobInbox"]
