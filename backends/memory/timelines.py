"""Run timelines of ``MemoryStore``: append-only, the newest ``TIMELINE_CAP`` events per run.

The store keeps ``TimelineEvent`` objects that nobody else holds, and copies on read.

* An event the engine writes with ``save_run_changes_now`` is handed over
  (``ports.WritesNow``: the caller never touches it again), so it is kept as it is: no field
  is read on append but its time (one without gets the clock's now). The engine's core
  gives an event without data the shared read-only ``model.NO_DATA`` (parked runs keep a
  few such events each: no empty map of their own). Every engine step appends two or
  three events; taking each apart into a row cost ~90 bytecodes an event.
* An event given to any other method (``append_timeline_event(s)``, an awaited
  ``save_run_changes``) is still the caller's: a private copy is kept (``private``), so
  mutating it afterwards changes nothing stored (one without data keeps ``NO_DATA``).

Reading builds fresh ``TimelineEvent``s equal to what a ``to_dict``/``from_dict`` round trip
gives (``_read``): the time in UTC, a text field that is not a plain string (an enum member
such as a ``RunStatus``, a number) made a string, an empty ``run_id`` the run's, the data
a deep copy. Doing that on read rather than on append costs nothing on the engine's path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from cordtrio.errors import ValidationError
from cordtrio.fields import json_copy
from cordtrio.model import NO_DATA, TimelineEvent
from cordtrio.ports import TIMELINE_CAP
from cordtrio.timeutil import parse_ts

_ALL_BUT_NEWEST = slice(-TIMELINE_CAP)  # what trimming a timeline to its newest removes
_time_of = attrgetter("time")


def _text(value: Any) -> str:
    """A field as ``from_dict`` reads it back: a string, ``""`` for empty (an enum member
    such as a ``RunStatus`` becomes its value)."""
    return value if type(value) is str else (str(value) if value else "")


def _time(value: datetime) -> datetime:
    """The time in UTC, as a stored RFC 3339 string parses back (naive means UTC)."""
    if value.tzinfo is UTC:
        return value
    parsed = parse_ts(value)
    assert parsed is not None
    return parsed


def private(event: TimelineEvent) -> TimelineEvent:
    """A copy of ``event`` that shares nothing mutable with it (its data copied deeply), its
    time in UTC. Raises ``ValidationError`` for a time that is not a datetime."""
    data = event.data
    time = event.time
    if time is not None:
        if not isinstance(time, datetime):
            raise ValidationError(f"timeline event {event.type!r} of run {event.run_id!r}: "
                                  f"time must be a datetime, not {type(time).__name__}")
        time = _time(time)
    return TimelineEvent(time, event.type, event.run_id, event.workflow_id,
                         event.step_id, event.job_id, event.status, event.result_ptr,
                         event.message, json_copy(data) if data else NO_DATA)


def _read(event: TimelineEvent, run_id: str) -> TimelineEvent:
    """A fresh event from a kept one, as a document round trip would give it back."""
    time = event.time
    data = event.data
    return TimelineEvent(
        time if time is None or time.tzinfo is UTC else _time(time), _text(event.type),
        _text(event.run_id) or run_id, _text(event.workflow_id), _text(event.step_id),
        _text(event.job_id), _text(event.status), _text(event.result_ptr),
        _text(event.message), json_copy(data) if data else {})


class Timelines:
    """Each run's events, oldest first, trimmed to the newest ``TIMELINE_CAP`` on append.

    A plain list per run: an empty deque costs ~600 bytes, which parked runs (W4) would pay.
    ``MemoryStore`` keeps a run's list on its record too (``kept``), so that an engine's
    write appends to it (``add``) without looking it up.
    """

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._events: dict[str, list[TimelineEvent]] = {}

    def append(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        """Keep ``events`` (handed over: nobody else holds them) after the run's, in order
        (see ``add``)."""
        self.add(self.kept(run_id), events)

    def kept(self, run_id: str) -> list[TimelineEvent]:
        """The list the run's events are kept in (made empty for a run without any yet): a
        store may hold on to it, for ``add``, until it ``drop``s the run's."""
        if not run_id:
            raise ValidationError("run id required")
        kept = self._events.get(run_id)
        if kept is None:
            kept = self._events[run_id] = []
        return kept

    def add(self, kept: list[TimelineEvent], events: Sequence[TimelineEvent]) -> None:
        """Keep ``events`` (handed over: nobody else holds them) at the end of ``kept`` (a
        run's list, from ``kept``), in order; those without ``time`` get the clock's now (an
        empty ``run_id`` reads back as the run's id). Their data is kept as it is (a read
        copies it): the core's events without any share the read-only ``NO_DATA``."""
        if None in map(_time_of, events):  # (the loops in C: two or three events a step)
            now = self._now()
            for event in events:
                if event.time is None:
                    event.time = now
        kept += events
        del kept[_ALL_BUT_NEWEST]  # (nothing while the run has at most ``TIMELINE_CAP``)

    def newest(self, run_id: str, limit: int) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        kept = self._events.get(run_id)
        if not kept:
            return []
        return [_read(event, run_id) for event in kept[max(0, len(kept) - limit):]]

    def drop(self, run_id: str) -> None:
        self._events.pop(run_id, None)


__all__ = ["Timelines", "private"]
