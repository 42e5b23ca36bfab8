"""Test doubles for users' own tests of their workflows.

- ``TrioWallClock``: wall-clock timestamps that follow Trio's clock, so under
  ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``)
  timestamps and timers agree while hours of backoff pass instantly.
- ``RecordingBus``: wraps any bus and records every published packet, so a test can assert
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

__all__ = ["Published", "RecordingBus", "TrioWallClock"]


@dataclass(frozen=True)
class Published:
    """One packet as it was published: when (Trio time), on which subject, what."""

    time: float
    subject: str
    packet: BusPacket


class RecordingBus:
    """A bus wrapper that records what is published, then forwards it."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.published: list[Published] = []

    async def publish(self, subject: str, packet: BusPacket) -> None:
        self.published.append(Published(trio.current_time(), subject, packet))
        await self.inner.publish(subject, packet)

    @asynccontextmanager
    async def subscribe(
        self, subject: str, queue: str = "", *, max_buffer: int = 1024
    ) -> AsyncIterator[trio.abc.ReceiveChannel[BusPacket]]:
        async with self.inner.subscribe(subject, queue, max_buffer=max_buffer) as channel:
            yield channel

    def payloads(self, subject: str) -> list[object]:
        """Payloads published on ``subject``, in order."""
        return [p.packet.payload for p in self.published if p.subject == subject]
