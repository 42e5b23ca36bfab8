"""What the router's parts need of the router and of each other.

The router (``router.py``) is split by responsibility into parts — its connections
(``router_peers.py``), plain subscriptions (``router_delivery.py``), job queues
(``router_jobs.py``), admission (``router_auth.py``) and the op handler
(``router_ops.py``) — that reach the router's state and one another through it. These
protocols say exactly what they use, so a part depends on this small description instead
of on ``NngRouter`` and the router's modules import each other without a circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import pynng
import trio

from cordtrio.protocol import BusPacket

from ..job_queues import Consumer, JobQueues
from ._common import RecentIds
from .frames import Op
from .table import _Peer, _Sub


class PeerLinks(Protocol):
    """The connections (``router_peers.Peers``): ``by_pipe`` the open ones, ``dead`` the
    pipes gone."""

    @property
    def by_pipe(self) -> dict[int, _Peer]: ...
    @property
    def dead(self) -> RecentIds: ...
    def open(self, pipe: pynng.Pipe, pipe_id: int) -> _Peer: ...
    async def cut(self, peer: _Peer, linger: float = 0.0) -> None: ...
    def send(self, peer: _Peer, op: Op) -> None: ...
    def credit(self, peer: _Peer, conn: int, received: int) -> None: ...
    def over_bound(self, peer: _Peer, wire: bytes) -> bool: ...


class Sender(Protocol):
    """The socket's receive loop and sends (``_io.ThreadedSender``)."""

    async def send(self, msg: pynng.Message) -> None: ...
    async def receive_forever(
        self, on_message: Callable[[pynng.Message], None], who: str, batch: int = 256,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None: ...


class DeliveryPart(Protocol):
    """Plain subscriptions (``router_delivery.Delivery``)."""

    blocked: set[_Sub]

    def add_remote(self, peer: _Peer, sid: int, subject: str, queue: str,
                   room: int | None) -> None: ...
    def remove_remote(self, peer: _Peer, sid: int) -> None: ...
    def remote_room(self, peer: _Peer, sid: int, n: int) -> None: ...
    def drop_sub(self, sub: _Sub) -> None: ...
    def deliver(self, subject: str, wire: bytes, packet: BusPacket | None = None
                ) -> list[Callable[[], Awaitable[None]]]: ...
    def bounce(self, subject: str, queue: str, wire: bytes) -> None: ...


class JobsPart(Protocol):
    """Job queues and their consumers (``router_jobs.JobDelivery``)."""

    queues: JobQueues

    def offer(self, job_id: str, topic: str, wire: bytes) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    async def publish_later(self, peer: _Peer, pid: int, subject: str, wire: bytes,
                            job_id: str, topic: str) -> None: ...
    def add_remote(self, peer: _Peer, cid: int, topics: Collection[str],
                   capacity: int) -> None: ...
    def remove_remote(self, peer: _Peer, cid: int) -> None: ...
    def ack_remote(self, peer: _Peer, cid: int, job_id: str) -> None: ...
    def ack_held(self, consumer: Consumer, job_id: str) -> None: ...
    def remove_consumer(self, consumer: Consumer) -> None: ...
    def holder_refusal(self, peer: _Peer, kind: type, subject: str, wire: bytes,
                       claimed: str) -> tuple[str, BusPacket | None, Consumer | None]: ...


class GatePart(Protocol):
    """Admission (``router_auth.Gate``)."""

    def challenge(self, peer: _Peer, hello: Op) -> None: ...
    def authenticate(self, peer: _Peer, ops: list[Any]) -> list[Any]: ...
    def deny(self, peer: _Peer, reason: str) -> None: ...
    def refused(self, peer: _Peer, subject: str, wire: bytes, claimed: str
                ) -> tuple[str, BusPacket | None, Consumer | None]: ...
    def order_refusal(self, peer: _Peer, subject: str) -> str: ...
    def forbid(self, peer: _Peer, subject: str, reason: str) -> None: ...


class OpsPart(Protocol):
    """The op handler (``router_ops.OpHandler``)."""

    def fan_out(self, peer: _Peer, pid: int, subject: str, wire: bytes,
                packet: BusPacket | None = None, ack: tuple[Consumer, str] | None = None
                ) -> None: ...


class RouterHost(Protocol):
    """The router as its parts see it (``router.NngRouter``)."""

    closed: bool
    dropped_frames: int
    heartbeat_interval: float
    liveness_timeout: float
    slow_consumer_timeout: float
    max_pending_bytes: int
    @property
    def _nursery(self) -> trio.Nursery | None: ...
    @property
    def _io(self) -> Sender: ...
    @property
    def _conns(self) -> PeerLinks: ...
    @property
    def _delivery(self) -> DeliveryPart: ...
    @property
    def _jobs(self) -> JobsPart: ...
    @property
    def _gate(self) -> GatePart: ...
    @property
    def _ops(self) -> OpsPart: ...

    async def publish(self, subject: str, packet: BusPacket) -> None: ...
