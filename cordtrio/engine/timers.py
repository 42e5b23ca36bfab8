"""A run task's timers: a heap of deadlines on Trio's clock (SPEC §6 backoffs, delays,
step timeouts, job resends), owned by the task, so cancelling the task's scope drops them
all at once. The task waits for its next envelope in its mailbox; the engine's one
``Alarm`` pokes that mailbox at the task's next deadline, so a wait opens no cancel scope
of its own (entering and leaving one per wait cost more than the rest of the wait)."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime

import trio

from ..core.events import ArmTimer, TimerFired
from .envelopes import Envelope, Item, Mailbox


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    seq: int
    event: TimerFired = field(compare=False)
    at: datetime = field(compare=False)


class Timers:
    """Armed deadlines of one run, each at most once (the core may ask again on redo)."""

    __slots__ = ("_armed", "_seq", "heap")

    def __init__(self) -> None:
        self.heap: list[_Timer] = []
        """The armed timers, earliest first (read-only outside): a list, so a run task's
        "any timer armed?" on every wake-up is a plain truth test, not a method call."""
        self._armed: set[tuple[str, str, str, datetime]] = set()
        self._seq = 0

    def __bool__(self) -> bool:
        return bool(self.heap)

    @property
    def next_deadline(self) -> float:
        """Trio time of the earliest timer (only when there is one)."""
        return self.heap[0].deadline

    def arm(self, effect: ArmTimer, now: datetime) -> None:
        """Fire ``effect`` at its wall time ``at``, measured from ``now`` on Trio's clock."""
        key = (effect.kind, effect.target, effect.job_id, effect.at)
        if key in self._armed:
            return
        self._armed.add(key)
        delay = (effect.at - now).total_seconds()
        self._seq += 1
        heapq.heappush(self.heap, _Timer(trio.current_time() + max(0.0, delay), self._seq,
                                         TimerFired(effect.kind, effect.target,
                                                    effect.job_id), effect.at))

    def due(self) -> list[Item]:
        """Envelopes of the timers whose deadline has passed, removed from the heap (as a
        batch of the run task's mailbox items)."""
        out: list[Item] = []
        heap = self.heap
        if not heap:
            return out
        now = trio.current_time()
        while heap and heap[0].deadline <= now:
            timer = heapq.heappop(heap)
            self._armed.discard((timer.event.kind, timer.event.target, timer.event.job_id,
                                 timer.at))
            out.append(Envelope(timer.event, fired_at=timer.at))
        return out


class Alarm:
    """Wakes run tasks at their next timer deadline (one per engine; see the module
    docstring). An entry whose task has moved on only wakes it once for nothing: the task
    finds no timer due and waits again."""

    __slots__ = ("_heap", "_scope", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Mailbox]] = []
        self._seq = 0
        self._scope: trio.CancelScope | None = None

    def set(self, deadline: float, mailbox: Mailbox) -> None:
        """Poke ``mailbox`` once Trio's clock reaches ``deadline``."""
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, mailbox))
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].poke()


__all__ = ["Alarm", "Timers"]
