"""The nng bus router: one listening ``pair1`` (polyamorous) socket, every client a pipe.

``NngRouter`` is the hub of the bus and a ``JobBus`` for the process hosting it; it puts
together the parts that each own one thing:

* ``router_delivery.py``: publish to subscribers, local and remote (room, queue groups,
  bounced packets), over the subscription table of ``table.py``;
* ``router_jobs.py``: the job queues' consumers, hand-out, worker-lost reports, the
  holder rule for results;
* ``router_auth.py``: the token handshake and the ops a connection may not do;
* ``router_peers.py``: client connection records, the writer, pings, liveness and
  slow-consumer cut-offs;
* ``router_ops.py``: the receive loop and what each op from a client does;
* ``tls.py``: the ``tls+tcp://`` configuration.

nng's polyamorous pair drops a message when a pipe's small send queue is full, so the
router never has more than ``WINDOW`` unacknowledged frames towards one pipe: clients
return ``credit`` for the frames they receive, and everything waiting for a pipe is
batched into its next frame. See ``docs/bus.md``.

The limits and helpers shared with the client live in ``_common.py``; the names that used
to be defined here are re-exported for existing imports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import pynng
import trio

from cordtrio._nursery import open_service_nursery
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.ports import OffersPublishNow
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    encode_packet,
)

from ..job_queues import DEFAULT_MAX_PENDING, DEFAULT_MAX_REDELIVERIES, JobQueues
from ..local_jobs import LocalJobInbox
from ._auth import check_token
from ._common import BATCH_BYTES as BATCH_BYTES
from ._common import DEFAULT_MAX_BUFFER as DEFAULT_MAX_BUFFER
from ._common import FRAME_SLACK as FRAME_SLACK
from ._common import HEARTBEAT_INTERVAL as HEARTBEAT_INTERVAL
from ._common import LIVENESS_TIMEOUT as LIVENESS_TIMEOUT
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
from ._io import PipeEvents, ThreadedSender
from .inbox import Inbox
from .router_auth import DENIED_LINGER as DENIED_LINGER
from .router_auth import Gate
from .router_delivery import Delivery
from .router_jobs import JobDelivery
from .router_jobs import _RemoteConsumer as _RemoteConsumer
from .router_ops import OpHandler
from .router_ops import packet_field as packet_field
from .router_peers import Peers
from .table import _Group as _Group
from .table import _Listeners as _Listeners
from .table import _Peer as _Peer
from .table import _Sub as _Sub
from .table import _Table as _Table
from .table import split_subject as split_subject
from .tls import server_tls as server_tls
from .tls import uses_tls as uses_tls

SLOW_CONSUMER_TIMEOUT = 5.0
"""Seconds a remote plain subscriber may go without room before its client is cut off."""
MAX_PENDING_BYTES = 8 * 1024 * 1024
"""Packet bytes the router queues for one client before cutting it off."""


class NngRouter(OffersPublishNow):
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
        self._nursery: trio.Nursery | None = None
        self._events: PipeEvents | None = None
        self.liveness_timeout = liveness_timeout
        self.heartbeat_interval = min(heartbeat_interval, liveness_timeout / 3)
        self.slow_consumer_timeout = slow_consumer_timeout
        self.max_pending_bytes = max_pending_bytes
        self.closed = False
        self.urls: list[str] = []
        self.dropped_frames = 0
        self._conns = Peers(self)
        self._delivery = Delivery(self)
        self._jobs = JobDelivery(self, max_redeliveries=max_redeliveries,
                                 max_pending=max_pending)
        self._gate = Gate(self, token)
        self._ops = OpHandler(self)

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
            await self._jobs.submit(payload.job_id, payload.topic, wire)
        elif subject == SUBJECT_CANCEL and isinstance(payload, JobCancel):
            self._jobs.cancel(payload.job_id)
        for wait in self._delivery.deliver(subject, wire):
            await wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_now(self, subject: str, packet: BusPacket) -> bool:
        """``publish`` without awaiting it (no cancellation check) for a job request the
        job queues alone take: they have room and nobody subscribes to its subject, so
        nothing can make it wait (the engine's job requests, ``ports.PublishNow``). False,
        having done nothing, for anything else: then await ``publish``."""
        table = self._delivery.table
        if (subject != SUBJECT_SUBMIT or packet.__class__ is not BusPacket or self.closed
                or subject in table.exact or table.wild):  # ``not table.unheard(subject)``
            return False
        payload: Any = packet.payload
        jobs = self._jobs
        queues = jobs.queues
        if payload.__class__ is not JobRequest or queues.pending >= queues.max_pending:
            return False  # (or the queues are ``full``)
        try:
            wire = encode_packet(packet)  # ``encode_for_bus``, the packet checked above
        except ProtocolError:
            return False  # ``publish`` raises it
        if len(wire) > self._max_packet:
            return False  # ``publish`` raises it
        jobs.offer(payload.job_id, payload.topic, wire)
        return True

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
        inbox = self._delivery.add_local(subject, queue, max_buffer)
        try:
            yield inbox
        finally:
            inbox.close()

    listens_for_payloads = True
    """``listen`` takes ``on_payload`` (``ports.DirectBus``). False in a subclass that
    overrides ``listen`` (its callbacks then get every packet, as that ``listen``
    expects)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "listen" in cls.__dict__:
            cls.listens_for_payloads = False

    @asynccontextmanager
    async def listen(
        self, subject: str, queue: str, callback: Callable[[BusPacket], None], *,
        on_payload: Callable[[Any], None] | None = None,
    ) -> AsyncIterator[None]:
        """Call ``callback(packet)`` for the duration of the block, as a subscriber of
        ``subject`` (in queue group ``queue``: ``""`` for none) in this process would
        receive ``packet``, from within the delivery: no buffer, no task, never makes a
        publisher wait (``ports.DirectBus``; the engine routes job results with it). An
        exception it raises is logged. ``on_payload(payload)``, when given, must do what
        ``callback`` does with a packet of that payload (it reads nothing else of it): a
        client's result or progress then reaches it with no packet built, while this
        listener is its subject's only one (the packet is decoded for the holder rule
        anyway)."""
        check_subject("listen", subject, queue)
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        sub = self._delivery.add_callback(subject, queue, callback, on_payload)
        try:
            yield
        finally:
            self._delivery.remove_callback(sub)

    @asynccontextmanager
    async def consume_jobs(
        self, topics: Collection[str], *, capacity: int
    ) -> AsyncIterator[LocalJobInbox]:
        """Take jobs of ``topics`` in this process for the duration of the block, at most
        ``capacity`` unacknowledged at once (``JobInbox``). Leaving the block hands every
        job not acknowledged back to its queue (past the bound: reported lost)."""
        if self.closed:
            raise trio.ClosedResourceError("the nng router is closed")
        inbox = self._jobs.add_local(topics, capacity)
        consumer = inbox.consumer
        assert consumer is not None
        try:
            yield inbox
        finally:
            self._jobs.remove_local(inbox, consumer)

    # ------------------------------------------------------------------ monitoring

    @property
    def jobs(self) -> JobQueues:
        """The job queues (``backends/job_queues.py``)."""
        return self._jobs.queues

    @property
    def _peers(self) -> dict[int, _Peer]:
        """The client connections, by pipe id."""
        return self._conns.by_pipe

    @property
    def peer_count(self) -> int:
        """Connected clients."""
        return len(self._conns.by_pipe)

    @property
    def subscription_count(self) -> int:
        """Subscriptions known to the router, local and remote."""
        return self._delivery.table.count()

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
        return self._conns.queued_bytes

    @property
    def liveness_cuts(self) -> int:
        """Clients cut off after ``liveness_timeout`` of silence (total)."""
        return self._conns.liveness_cuts

    @property
    def slow_consumers(self) -> int:
        """Clients cut off for not reading their plain subscriptions (total)."""
        return self._conns.slow_consumers

    @property
    def auth_failures(self) -> int:
        """Connections refused: they could not prove they hold the token (total)."""
        return self._gate.auth_failures

    @property
    def forbidden_ops(self) -> int:
        """Job packets a connection may not publish, dropped (total)."""
        return self._gate.forbidden_ops

    # ------------------------------------------------------------------ lifecycle

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._ops.receive_loop)
        nursery.start_soon(self._conns.writer_loop)
        nursery.start_soon(self._conns.check_loop)

    def _shutdown(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.active = False
        self._conns.end()
        self._delivery.end_local()
        self._jobs.end()
        self._io.close()


def resolved_url(address: str, listener: pynng.Listener) -> str:
    """``tcp://host:0`` → the address with the port nng bound; others unchanged."""
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("tcp", "tcp4", "tls+tcp") and rest.endswith(":0"):
        try:
            return f"{scheme}://{listener.local_address}"
        except Exception:  # pragma: no cover - an exotic address family
            return address
    return address


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
        router._events = PipeEvents(sock, router._conns.pipe_added,
                                    router._conns.pipe_removed)
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
