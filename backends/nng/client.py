"""The nng bus client: a ``Bus`` in a process that dials the router.

``NngBus`` puts together the parts that each own one thing:

* ``client_subs.py``: subscriptions (room, packets handed back to queue groups) and
  publishes waiting for their ``puback``;
* ``client_jobs.py``: job consumers, their acknowledgements and ``on_lost``;
* ``client_conn.py``: the connection: handshake, the writer, receiving and op dispatch,
  heartbeats, liveness resets, re-registering everything on a new connection;
* ``tls.py``: the ``tls+tcp://`` configuration.

See ``docs/bus.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import TypeVar

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.ports import OffersPublishNow
from cordtrio.protocol import SUBJECT_RESULT, BusPacket
from cordtrio.ratelog import rate_limited

from ._auth import check_token
from ._common import (
    DEFAULT_MAX_BUFFER,
    MAX_PACKET,
    SOCKET_BUFFER,
    check_max_buffer,
    check_subject,
    encode_for_bus,
    max_frame,
)
from ._common import HEARTBEAT_INTERVAL as HEARTBEAT_INTERVAL
from ._common import LIVENESS_TIMEOUT as LIVENESS_TIMEOUT
from ._io import PipeEvents, log, ms
from .client_conn import Connection
from .client_jobs import JobConsumers
from .client_subs import LEFT_GROUPS as LEFT_GROUPS
from .client_subs import MAX_IN_FLIGHT as MAX_IN_FLIGHT
from .client_subs import Subscriptions
from .inbox import Inbox, JobChannel
from .tls import client_tls as client_tls

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0

_Channel = TypeVar("_Channel", Inbox, JobChannel)


class NngBus(OffersPublishNow):
    """A ``Bus`` over a connection to an ``NngRouter``; open it with ``open_nng_bus``.

    ``connected`` tells whether the router is reachable (and has accepted this client)
    right now; ``refused`` says why the router or this client refused the last
    connection (a token mismatch), empty once one is accepted; ``connections`` counts
    the connections made so far (it grows on every reconnection); ``dropped_frames`` counts
    malformed frames, ops and packets that were logged and ignored; ``liveness_resets``
    counts connections dropped because the router was not heard from in time.
    """

    publishes_requests_now = False
    """``publish_now`` takes a worker's results only (``ports.PublishNow``): an engine on
    this bus awaits ``publish`` for its job requests without trying it first."""

    def __init__(self, address: str, sock: pynng.Socket, *, max_in_flight: int = MAX_IN_FLIGHT,
                 max_packet: int = MAX_PACKET,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 token: str | None = None) -> None:
        check_token("open_nng_bus", token)
        if not heartbeat_interval > 0:
            raise ValueError(f"open_nng_bus: heartbeat_interval must be positive, "
                             f"got {heartbeat_interval!r}")
        self.address = address
        self._max_packet = max_packet
        self._ids = itertools.count(1)  # sid, pid, cid and bye numbers
        self._paused: trio.Event | None = None  # tests: a process that stopped running
        self._events: PipeEvents | None = None
        self.closed = False
        self.dropped_frames = 0
        self._link = Connection(self, sock, heartbeat_interval=heartbeat_interval,
                                token=token)
        self._pubsub = Subscriptions(self, max_in_flight)
        self._jobs = JobConsumers(self)

    # ------------------------------------------------------------------ Bus

    acks_results_now = True
    """A worker's result that ``publish_now`` took carries its job's acknowledgement: the
    worker makes no ``ack`` of its own after it (``Reporter.publish``), which would do
    nothing (``JobChannel.ack`` of a job riding with its result)."""

    def publish_now(self, subject: str, packet: BusPacket) -> bool:
        """``publish`` of a worker's result for a job this client received, without
        waiting for the router's ``puback`` (``ports.PublishNow``): the result carries
        its job's acknowledgement, so the router acknowledges the job once it has handed
        the result out, and nothing is left to the caller once it is queued (the
        worker's ``ack`` sends nothing). A result the router refuses is logged and its
        job is unacknowledged again, as when ``publish`` raises. False, having done
        nothing, for any other packet (or past ``max_in_flight``): then await
        ``publish``."""
        if subject != SUBJECT_RESULT or packet.__class__ is not BusPacket or self.closed:
            return False
        try:
            wire = encode_for_bus(subject, packet, self._max_packet)
        except ProtocolError:
            return False  # ``publish`` raises it
        return self._pubsub.publish_now(subject, packet, wire)

    async def publish(self, subject: str, packet: BusPacket) -> None:
        """Send ``packet`` through the router; returns once every subscriber has been
        handed it (waiting while one it must reach has no room). While the router is
        unreachable this waits, and re-sends after the reconnection; bound it with a
        cancel scope if that matters."""
        await trio.lowlevel.checkpoint_if_cancelled()
        check_subject("publish", subject)
        wire = encode_for_bus(subject, packet, self._max_packet)
        await self._pubsub.publish(subject, packet, wire)

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
        inbox, acked = self._pubsub.add(subject, queue, max_buffer)
        async with self._registered(inbox, acked) as channel:
            yield channel

    @asynccontextmanager
    async def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AsyncIterator[JobChannel]:
        """Take jobs of ``topics`` for the duration of the block, at most ``capacity``
        unacknowledged at once (the ``JobInbox`` port). The router knows the consumer when
        the block starts. When the connection is reset, the jobs received on it and not
        acknowledged go to ``on_lost`` (the router gives them to another worker); leaving
        the block hands every job not acknowledged back to the router."""
        inbox, acked = self._jobs.add(topics, capacity)
        async with self._registered(inbox, acked) as channel:
            yield channel

    @asynccontextmanager
    async def _registered(self, channel: _Channel, acked: trio.Event) -> AsyncIterator[_Channel]:
        """``channel`` once the router has confirmed it (``acked``); closed on leaving."""
        try:
            await acked.wait()
            self._check_open()
            yield channel
        finally:
            channel.close()

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._link.accepted

    @property
    def refused(self) -> str:
        return self._link.refused

    @property
    def connections(self) -> int:
        return self._link.connections

    @property
    def liveness_resets(self) -> int:
        return self._link.liveness_resets

    async def wait_connected(self) -> None:
        """Return once connected to the router (and accepted by it), or once a connection
        was refused (``refused`` says why)."""
        while not self.connected and not self.closed and not self.refused:
            await self._link.connect_event.wait()

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the nng bus is closed")

    def _garbage(self, what: str, exc: Exception) -> None:
        self.dropped_frames += 1
        rate_limited(log).warning(f"{id(self)} {what}", "nng bus: dropped a malformed %s "
                                  "from %s: %s", what, self.address, exc)

    # ------------------------------------------------------------------ lifecycle

    async def _goodbye(self, timeout: float) -> None:
        """Leave cleanly: unsubscribe everything, then make sure the router has taken
        every op sent (bounced queue-group packets above all) before the socket closes.
        A packet the router had already sent for a left group subscription arrives
        before the router's ``bye`` answer and is bounced, so repeat until none was."""
        if self.closed or not self.connected:
            return
        link = self._link
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            for sid in self._pubsub.subs:
                link.queue({"op": "unsub", "sid": sid})
            for cid in self._jobs.consumers:
                link.queue({"op": "unjobs", "cid": cid})
            while self.connected:
                bounced = self._pubsub.bounced
                n = next(self._ids)
                done = link.byes[n] = trio.Event()
                link.queue({"op": "bye", "n": n})
                try:
                    await done.wait()
                finally:
                    del link.byes[n]
                if self._pubsub.bounced == bounced or not self.connected:
                    return

    def _start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._link.receive_loop)
        nursery.start_soon(self._link.writer_loop)
        nursery.start_soon(self._link.heartbeat_loop)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        self._pubsub.end()
        self._jobs.end()
        self._link.close()


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
        bus._events = PipeEvents(sock, bus._link.pipe_added, bus._link.pipe_removed)
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
