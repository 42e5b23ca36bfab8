"""What the client's parts need of the client and of each other.

The client (``client.py``) is split into its connection (``client_conn.py``), its
subscriptions and publishes (``client_subs.py``) and its job consumers
(``client_jobs.py``). These protocols say exactly what each part uses of the others, so the
parts depend on this small description instead of on ``NngBus`` and the client's modules
import each other without a circle. ``Pending`` is the one outbox entry they share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Protocol

import trio

from .frames import Op


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox entry resolved when the frame is built: a publish or a room grant."""

    kind: str  # "pub" | "room"
    id: int


class Link(Protocol):
    """The current connection (``client_conn.Connection``); ``pipe_id`` is None between
    connections."""

    pipe_id: int | None

    def queue(self, item: Op | Pending) -> None: ...


class PubSubPart(Protocol):
    """Subscriptions and publishes awaiting their ``puback`` (``client_subs.Subscriptions``)."""

    @property
    def subs(self) -> Sized: ...
    @property
    def pubs(self) -> Sized: ...
    def sub_ops(self) -> Iterator[Op]: ...
    def pending_pubs(self) -> Iterator[Pending]: ...
    def resolve(self, item: Op | Pending) -> Op | None: ...
    def deliver(self, sid: int, wire: bytes) -> None: ...
    def puback(self, pid: int, error: object) -> None: ...
    def suback(self, sid: int) -> None: ...


class JobsPart(Protocol):
    """Job consumers (``client_jobs.JobConsumers``)."""

    def jobs_ops(self) -> Iterator[Op]: ...
    def ride(self, job_id: str, queued: bool = False) -> int: ...
    def carry(self, cid: int, job_id: str) -> bool: ...
    def unride(self, cid: int, job_id: str) -> None: ...
    def landed(self, cid: int, job_id: str) -> None: ...
    def reset(self) -> None: ...
    def deliver(self, cid: int, wire: bytes) -> None: ...
    def jobsack(self, cid: int) -> None: ...


class ClientHost(Protocol):
    """The client as its parts see it (``client.NngBus``)."""

    address: str
    closed: bool
    _paused: trio.Event | None
    @property
    def _ids(self) -> Iterator[int]: ...
    @property
    def _link(self) -> Link: ...
    @property
    def _pubsub(self) -> PubSubPart: ...
    @property
    def _jobs(self) -> JobsPart: ...

    def _check_open(self) -> None: ...
    def _garbage(self, what: str, exc: Exception) -> None: ...
