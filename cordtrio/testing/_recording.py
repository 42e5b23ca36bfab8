"""Test doubles for users' own tests of their workflows.

- ``TrioWallClock``: wall-clock timestamps that follow Trio's clock, so under
  ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``)
  timestamps and timers agree while hours of backoff pass instantly.
- ``PlainBus``: any bus seen through the plain ``Bus`` port only, so a test can run the
  engine and workers as they run over a third-party bus (no job queues, no callbacks).
- ``RecordingBus``: a ``PlainBus`` that records every published packet, so a test can assert
  what the engine sent (job requests, cancels, alerts) and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ..clock import TrioWallClock
from ..ports import Bus
from ..protocol import BusPacket

__all__ = ["PlainBus", "Published", "RecordingBus", "TrioWallClock"]


@dataclass(frozen=True)
class Published:
    """One packet as it was published: when (Trio time), on which subject, what."""

    time: float
    subject: str
    packet: BusPacket


class PlainBus:
    """``inner`` behind the plain ``Bus`` port only: ``publish`` and ``subscribe``, neither
    job queues (``ports.JobBus``) nor callbacks (``ports.DirectBus``). Over it the engine takes
    results from a subscription and workers share jobs through a queue group of
    ``sys.job.submit``, without reporting job starts: what a third-party bus offers."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner

    async def publish(self, subject: str, packet: BusPacket) -> None:
        await self.inner.publish(subject, packet)

    @asynccontextmanager
    async def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int = 1024
    ) -> AsyncIterator[trio.abc.ReceiveChannel[BusPacket]]:
        async with self.inner.subscribe(subject, queue, max_buffer=max_buffer) as channel:
            yield channel


class RecordingBus(PlainBus):
    """A bus wrapper that records what is published, then forwards it."""

    def __init__(self, inner: Bus) -> None:
        super().__init__(inner)
        self.published: list[Published] = []

    async def publish(self, subject: str, packet: BusPacket) -> None:
        self.published.append(Published(trio.current_time(), subject, packet))
        await self.inner.publish(subject, packet)

    def payloads(self, subject: str) -> list[object]:
        """Payloads published on ``subject``, in order."""
        return [p.packet.payload for p in self.published if p.subject == subject]
