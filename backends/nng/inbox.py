"""A subscriber's bounded buffer that tells the router how much room it has.

``Inbox`` is the receive channel an nng-bus ``subscribe`` yields. It holds at most
``capacity`` packets; the router may only send a subscription as many packets as the
inbox has granted it *room* for, and the inbox grants more room (``on_room``) as its
consumer takes packets out. So a full subscriber makes publishers wait at the router —
the backpressure of ``MemoryBus`` — without a round trip per packet and without a stuck
consumer being able to stall anyone but the publishers that need *it*.

``capacity=0`` works like an unbuffered memory channel: room is granted while a receiver
is waiting. ``capacity=math.inf`` is unbounded (no room accounting at all).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import trio

from cordtrio.protocol import BusPacket


class Inbox(trio.abc.ReceiveChannel[BusPacket]):
    """Bounded FIFO of packets with room accounting (see the module docstring).

    Besides ``receive``/``aclose`` (and ``async for``), ``receive_nowait`` and ``close``
    work as on a Trio memory channel.
    """

    def __init__(self, capacity: int | float) -> None:
        self.capacity = capacity
        self._items: deque[BusPacket] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._granted = 0  # room granted to the sender and not used by an arrival yet
        self._closed = False  # by the consumer
        self._ended = False  # by the bus: EndOfChannel once drained
        self.on_room: Callable[[int], None] | None = None
        self.on_close: Callable[[list[BusPacket]], None] | None = None

    # ---------------------------------------------------------------- the bus's side

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Packets waiting to be read."""
        return len(self._items)

    def initial_room(self) -> int | None:
        """Start the room accounting afresh (a new subscription or connection) and return
        the room to announce; ``None`` when unbounded."""
        self._granted = 0
        if self.capacity == math.inf:
            return None
        room = self._deficit(0)
        self._granted = room
        return room

    def put(self, packet: BusPacket) -> bool:
        """A packet arrived (it used one unit of room). False if the consumer closed the
        inbox: the caller decides what happens to the packet."""
        self.arrived()
        if self._closed:
            return False
        self._items.append(packet)
        self._lot.unpark()
        return True

    def arrived(self) -> None:
        """Account for an arrival without queueing anything (e.g. an undecodable packet)."""
        if self._granted > 0:
            self._granted -= 1

    def end(self) -> None:
        """The bus is closing: receivers get what is buffered, then ``EndOfChannel``."""
        self._ended = True
        self._lot.unpark_all()

    def replenish(self, waiting: int = 0) -> None:
        """Grant the room that has opened up since the last grant."""
        if self.capacity == math.inf or self._closed or self._ended:
            return
        room = self._deficit(waiting)
        if room > 0:
            self._granted += room
            if self.on_room is not None:
                self.on_room(room)

    def _deficit(self, waiting: int) -> int:
        # unbuffered: one packet per receiver waiting now
        target = int(self.capacity) if self.capacity > 0 else len(self._lot) + waiting
        return max(0, target - len(self._items) - self._granted)

    # ----------------------------------------------------------- the consumer's side

    def receive_nowait(self) -> BusPacket:
        if self._closed:
            raise trio.ClosedResourceError("this subscription's channel is closed")
        if self._items:
            packet = self._items.popleft()
            self.replenish()
            return packet
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> BusPacket:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            packet = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return packet
        while True:
            self.replenish(waiting=1)  # an unbuffered inbox has room while we wait
            await self._lot.park()
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                continue

    def close(self) -> None:
        """Close the consumer's end; buffered packets go to ``on_close``."""
        if self._closed:
            return
        self._closed = True
        leftover = list(self._items)
        self._items.clear()
        self._lot.unpark_all()
        if self.on_close is not None:
            self.on_close(leftover)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()




class JobChannel:
    """A worker's job inbox on an nng bus client (the ``JobInbox`` port).

    Jobs arrive (``put``) at most ``capacity`` unacknowledged at once; ``receive`` (or a
    reader's own ``ready.popleft()``) hands them out in order, each *received* until
    ``ack``. When the client's
    connection is reset, the router takes back every job it had delivered on it: ``reset``
    calls ``on_lost`` for each received, unacknowledged one (the worker stops it without
    reporting) and forgets those not received yet, which are never returned.
    """

    def __init__(self, cid: int, topics: frozenset[str], capacity: int) -> None:
        self.cid = cid
        self.topics = topics
        self.capacity = capacity
        self._items: deque[BusPacket] = deque()
        self.ready = self._items
        """The jobs delivered and not taken yet, in order: a reader may take one with
        ``popleft`` itself, as ``receive_nowait`` would (a worker's slot, a burst of jobs
        taken without a call each; ``Worker._slot``)."""
        # delivered and not acknowledged (a job counts as received from its delivery on:
        # one taken from ``ready`` is the reader's without a call; ``reset`` tells those
        # still buffered apart)
        self._received: set[str] = set()
        # received, their result on its way with their ack: True once its ``pub`` carries it
        # (None: queued by ``publish_now``, before its ``pub`` is written)
        self._riding: dict[str, bool | None] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._ended = False
        self.on_lost: Callable[[str], None] | None = None
        self.on_ack: Callable[[str], None] | None = None
        self.on_close: Callable[[], None] | None = None

    # ---------------------------------------------------------------- the bus's side

    @property
    def buffered(self) -> int:
        """Jobs delivered and not received yet."""
        return len(self._items)

    @property
    def held(self) -> int:
        """Jobs delivered on the current connection and not acknowledged."""
        return len(self._received) + len(self._riding)

    def put(self, job_id: str, packet: BusPacket) -> None:
        """A job delivered (``packet.payload`` is its ``JobRequest``, ``job_id`` its id)."""
        if self._closed or self._ended:
            return
        self._received.add(job_id)
        self._items.append(packet)
        self._lot.unpark()

    def reset(self) -> list[str]:
        """The connection these jobs came on is gone: drop what was not received, report
        what was received and not acknowledged to ``on_lost``; return those ids."""
        buffered = {packet.payload.job_id for packet in self._items}  # type: ignore[union-attr]
        self._items.clear()
        lost = sorted((self._received - buffered) | self._riding.keys())
        self._received.clear()
        self._riding.clear()
        if self.on_lost is not None:
            for job_id in lost:
                self.on_lost(job_id)
        return lost

    def end(self) -> None:
        """The bus is closing: receivers get what is buffered, then ``EndOfChannel``."""
        self._ended = True
        self._lot.unpark_all()

    # ----------------------------------------------------------- the consumer's side

    def receive_nowait(self) -> BusPacket:
        if self._items:
            return self._items.popleft()
        if self._closed or self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> BusPacket:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            packet = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return packet
        while True:
            await self._lot.park()
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                continue

    def ack(self, job_id: str) -> None:
        """The job's result is published: the bus may forget it. A job taken back
        meanwhile (its connection was reset) is not acknowledged: it is not ours any
        more; nor is one whose result carried its acknowledgement (``ride``)."""
        if job_id in self._received:
            self._received.discard(job_id)
            if self.on_ack is not None:
                self.on_ack(job_id)
        elif job_id in self._riding:
            carried = self._riding[job_id]
            if carried is None:  # its result's ``pub`` is queued to carry it (``landed``)
                return
            del self._riding[job_id]
            if not carried and self.on_ack is not None:
                self.on_ack(job_id)  # acknowledged before its result's ``pub`` went out

    def ride(self, job_id: str, queued: bool = False) -> bool:
        """The job's result is being published: its ``pub`` carries the acknowledgement (the
        router acknowledges the job once it has handed the result out), so ``ack`` sends
        nothing. False if the job is not one received here. ``queued``: the ``pub`` is
        queued and nobody waits for its ``puback`` (``NngBus.publish_now``): ``ack`` does
        nothing at all, even before the ``pub`` is written; ``landed`` forgets the job once
        the result is out."""
        if job_id not in self._received:
            return False
        self._received.discard(job_id)
        self._riding[job_id] = None if queued else False
        return True

    def landed(self, job_id: str) -> None:
        """The result of a job that rode with it has been handed out by the router."""
        self._riding.pop(job_id, None)

    def riding(self, job_id: str) -> bool:
        return job_id in self._riding

    def carry(self, job_id: str) -> bool:
        """The result's ``pub`` is being written: True if it is to carry the
        acknowledgement (the job still rides: not acknowledged meanwhile, nor taken back),
        and from now on ``ack`` sends nothing."""
        if job_id not in self._riding:
            return False
        self._riding[job_id] = True
        return True

    def unride(self, job_id: str) -> None:
        """The result did not go out (refused, or the publish was given up): the job is
        received and unacknowledged again."""
        if job_id in self._riding:
            del self._riding[job_id]
            self._received.add(job_id)

    def close(self) -> None:
        """Leave: the bus hands every job not acknowledged to another consumer."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._received.clear()
        self._riding.clear()
        self._lot.unpark_all()
        if self.on_close is not None:
            self.on_close()

    def __aiter__(self) -> JobChannel:
        return self

    async def __anext__(self) -> BusPacket:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


__all__ = ["Inbox", "JobChannel"]
