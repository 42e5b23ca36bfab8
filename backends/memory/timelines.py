"""Run timelines of ``MemoryStore``: append-only, the newest ``TIMELINE_CAP`` events per run.

An event is kept as a row: a tuple of its fields in ``TimelineEvent``'s field order, trailing
empty ones left out, the time as the (immutable) datetime and the data frozen
(``frozen.freeze``), or, when it is one entry of text (a dispatched job's pointer), as that
key and value in two more fields. A row of strings, a datetime and bytes is cheap to build
(no timestamp formatting, no dict copy), half the memory of a dict, and invisible to the
cyclic garbage collector — which matters with millions of events in memory. Reading builds fresh
``TimelineEvent``s equal to what a ``to_dict``/``from_dict`` round trip gives: a text field
that is not a plain string (an enum member such as a ``RunStatus``, a number) is kept as
given and made a string there, not on append (every event the engine writes has plain
strings only, and checking eight types per event cost ~1,500 instructions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from marshal import dumps
from typing import Any

from cordtrio.errors import ValidationError
from cordtrio.model import TimelineEvent
from cordtrio.ports import TIMELINE_CAP
from cordtrio.timeutil import parse_ts

from .frozen import Frozen, freeze, thaw

Row = tuple[Any, ...]


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


class Timelines:
    """Each run's events, oldest first, trimmed to the newest ``TIMELINE_CAP`` on append.

    A plain list per run: an empty deque costs ~600 bytes, which parked runs (W4) would pay.
    """

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._rows: dict[str, list[Row]] = {}

    def append(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        """Append in order; an event without ``run_id`` gets ``run_id``, one without
        ``time`` the clock's now."""
        if not run_id:
            raise ValidationError("run id required")
        rows = self._rows.get(run_id)
        if rows is None:
            rows = self._rows[run_id] = []
        now: datetime | None = None
        for event in events:
            when = event.time
            if when is None:
                when = now = now or _time(self._now())
            elif when.tzinfo is not UTC:
                when = _time(when)
            # attribute by attribute: each read a specialized bytecode, several times
            # cheaper than one ``operator.attrgetter`` call for the eight
            kind = event.type
            rid = event.run_id
            workflow_id = event.workflow_id
            step_id = event.step_id
            job_id = event.job_id
            status = event.status
            result_ptr = event.result_ptr
            message = event.message
            if not rid:
                rid = run_id
            data = event.data
            if data and len(data) == 1:
                # one entry of text (a dispatched job's ``context_ptr``): kept as two more
                # fields, read back as the map; ~2k instructions fewer than ``marshal``
                ((key, value),) = data.items()
                if type(key) is str and type(value) is str:
                    rows.append((when, kind, rid, workflow_id, step_id, job_id, status,
                                 result_ptr, message, key, value))
                    continue
            if data:
                frozen: Frozen
                try:  # ``freeze`` inlined: one call less per job started
                    frozen = dumps(data, 2)
                except ValueError:
                    frozen = freeze(data)
                rows.append((when, kind, rid, workflow_id, step_id, job_id, status, result_ptr,
                             message, frozen))
            elif message:  # nothing to leave out
                rows.append((when, kind, rid, workflow_id, step_id, job_id, status, result_ptr,
                             message))
            elif result_ptr:  # no message (a step that completed)
                rows.append((when, kind, rid, workflow_id, step_id, job_id, status, result_ptr))
            elif status:
                rows.append((when, kind, rid, workflow_id, step_id, job_id, status))
            else:  # trailing empty fields are left out (a shorter tuple)
                row = (when, kind, rid, workflow_id, step_id, job_id)
                end = 6
                while end > 3 and not row[end - 1]:
                    end -= 1
                rows.append(row[:end])
        if len(rows) > TIMELINE_CAP:
            del rows[:len(rows) - TIMELINE_CAP]

    def newest(self, run_id: str, limit: int) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        rows = self._rows.get(run_id)
        if not rows:
            return []
        return [_event(row) for row in rows[max(0, len(rows) - limit):]]

    def drop(self, run_id: str) -> None:
        self._rows.pop(run_id, None)


def _event(row: Row) -> TimelineEvent:
    if len(row) == _WITH_ENTRY:  # data of one text entry, kept as its key and value
        data: Any = {row[9]: row[10]}
        fields = (*row[:9], data)
    else:
        fields = row + ("",) * (10 - len(row))
        data = thaw(fields[9]) if fields[9] else {}
    kind, rid, workflow_id, step_id, job_id, status, result_ptr, message = map(
        _text, fields[1:9])
    return TimelineEvent(time=fields[0], type=kind, run_id=rid, workflow_id=workflow_id,
                         step_id=step_id, job_id=job_id, status=status,
                         result_ptr=result_ptr, message=message, data=data)


_WITH_ENTRY = 11  # a row's length when its data is one text entry (``Timelines.append``)


__all__ = ["Timelines"]
