"""A run task's timers: a heap of deadlines on Trio's clock (SPEC §6 backoffs, delays,
step timeouts). The task waits for its next envelope with ``move_on_at(next deadline)``;
cancelling the task's scope drops them all at once."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime

import trio

from ..core.events import ArmTimer, TimerFired
from .envelopes import Envelope


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    seq: int
    event: TimerFired = field(compare=False)
    at: datetime = field(compare=False)


class Timers:
    """Armed deadlines of one run, each at most once (the core may ask again on redo)."""

    __slots__ = ("_armed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._armed: set[tuple[str, str, str, datetime]] = set()
        self._seq = 0

    def __bool__(self) -> bool:
        return bool(self._heap)

    @property
    def next_deadline(self) -> float:
        """Trio time of the earliest timer (only when there is one)."""
        return self._heap[0].deadline

    def arm(self, effect: ArmTimer, now: datetime) -> None:
        """Fire ``effect`` at its wall time ``at``, measured from ``now`` on Trio's clock."""
        key = (effect.kind, effect.target, effect.job_id, effect.at)
        if key in self._armed:
            return
        self._armed.add(key)
        delay = (effect.at - now).total_seconds()
        self._seq += 1
        heapq.heappush(self._heap, _Timer(trio.current_time() + max(0.0, delay), self._seq,
                                          TimerFired(effect.kind, effect.target,
                                                     effect.job_id), effect.at))

    def due(self) -> list[Envelope]:
        """Envelopes of the timers whose deadline has passed, removed from the heap."""
        out: list[Envelope] = []
        heap = self._heap
        if not heap:
            return out
        now = trio.current_time()
        while heap and heap[0].deadline <= now:
            timer = heapq.heappop(heap)
            self._armed.discard((timer.event.kind, timer.event.target, timer.event.job_id,
                                 timer.at))
            out.append(Envelope(timer.event, fired_at=timer.at))
        return out


__all__ = ["Timers"]
