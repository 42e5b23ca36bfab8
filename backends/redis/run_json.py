"""The JSON of the run parts an engine step writes (the header, a step, a timeline event),
written straight from the objects: the same bytes as ``run_hash.dumps`` of their
``header_dict``/``to_dict`` documents, without building those dicts and walking them.

Every step rewrites the header and a step or two and appends two events; building each
document, copying its values (``json_copy``) and encoding it was most of the write's own
Python. Here each part is one string built field by field, in the documents' key order, with
the encoder's own string escape (``encode_basestring``) and, for nested values, its encoder
(``run_hash.encode_value``). A part with a value of an unexpected type (a number where a
string is declared, a plain string for a status) takes the general path, which gives the
bytes or the error ``dumps`` gives (tested against it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from json.encoder import encode_basestring
from operator import attrgetter
from typing import Any

from cordtrio.fields import RECENT_TS_TEXTS, new_timestamp_text
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun

from .run_hash import Where, dumps, encode_value

_esc: Callable[[Any], str] = encode_basestring
"""The string escape of ``dumps`` (``ensure_ascii=False``); raises TypeError on a non-string,
which sends the part down the general path."""

_stamp: Callable[[datetime], str] = new_timestamp_text
"""The text of a timestamp its cache lacks (``timestamp_text``'s, kept there). Timestamps
(ISO 8601) and status values never need escaping: they are quoted as they are."""

_cached = RECENT_TS_TEXTS.get
"""``timestamp_text``'s cache, looked up first (``_cached(ts) or _stamp(ts)``): a hit costs a
``dict.get`` instead of a Python call, and a step stamps ten fields, most of them hits."""

_QUOTED_MAX = 8192


class _Quoted(dict[Any, str]):
    """The escaped texts of the ids a step writes again and again (the run's and workflow's
    id in its header, a step's id, event types; the optional id fields: ``_Pieces``):
    ``_QUOTED[v]`` is a dict lookup instead of an escape (~1k instructions). A miss
    escapes (a non-string raises, as ``_esc`` does). Emptied when full; with hundreds of
    runs in flight an id is written again after a few thousand other ids."""

    def __missing__(self, value: Any) -> str:
        text = _esc(value)
        if len(self) >= _QUOTED_MAX:
            self.clear()
        self[value] = text
        return text


_QUOTED = _Quoted()


class _Pieces(_Quoted):
    """The texts ``,"<name>":<escaped value>`` of one optional field by value (``""`` for an
    empty one: the field is left out), for the id fields written again and again (a run's
    id and workflow in every event, a step's id and status, a job's id in its step and its
    two events): one dict lookup puts the whole field in place, where an escape lookup,
    a test and a string built around it took twice the instructions. A value
    that is not a string raises as ``_esc`` does; the cache is emptied when full, as
    ``_QUOTED``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.prefix = f',"{name}":'

    def __missing__(self, value: Any) -> str:
        text = f"{self.prefix}{_esc(value)}" if value else ""
        if len(self) >= _QUOTED_MAX:
            self.clear()
        self[value] = text
        return text


_RUN_ID = _Pieces("run_id")
_WORKFLOW_ID = _Pieces("workflow_id")
_STEP_ID = _Pieces("step_id")
_JOB_ID = _Pieces("job_id")
_STATUS = _Pieces("status")


_UNEXPECTED = (TypeError, ValueError, AttributeError)
"""What a field of an unexpected type raises on the direct path (the general path then
writes it, or raises the error ``dumps`` raises)."""


def _text(value: Any) -> str:
    """A value that is usually a string (an output, a status)."""
    return _esc(value) if type(value) is str else encode_value(value)


_HEAD_FIELDS: Callable[[WorkflowRun], tuple[Any, ...]] = attrgetter(
    "status", "workflow_id", "org_id", "team_id", "started_at", "completed_at",
    "triggered_by", "created_at", "idempotency_key", "rerun_of", "rerun_step", "dry_run")
"""The header's fields a kept text is checked against (``_HEADS``), read in one C call."""
_HEAD_VALUES: Callable[[WorkflowRun], tuple[Any, ...]] = attrgetter(
    "total_cost", "output", "error", "labels", "metadata")
"""The header's fields with values of their own: a header with any of them set is not
kept (equal values may be written differently: ``1`` and ``1.0``, dicts in another
order)."""
_NUMBERS = frozenset((float, int))
"""The types of a cost written as it is (a bool or an int enum: the encoder decides)."""
_HEADS: dict[str, tuple[tuple[Any, ...], str, str]] = {}
_HEADS_MAX = 4096
"""Per run id: the fields a header was last built from and its text before and after its
``updated_at``. A step's write usually changes nothing else in the header: when the run's
fields are equal to those (the status a ``RunStatus``, and none of ``_HEAD_VALUES`` set),
the header is those texts around the new ``updated_at``. Equal values give the same text (a
timestamp's is its UTC time: ``timestamp_text``, itself cached by equality). Emptied when
full."""


def header_json(run: WorkflowRun, where: Where) -> bytes:
    """``dumps(run.header_dict(with_input=False), where)``.

    Each optional field is its text or ``""``, and one f-string joins them: one string
    built, instead of a concatenation per field; the text around ``updated_at`` is kept
    per run (``_HEADS``)."""
    try:
        key = _HEAD_FIELDS(run)
        values = _HEAD_VALUES(run)
        cost = values[0]
        if type(cost) not in _NUMBERS:
            raise TypeError("total_cost")  # header_dict's empty test (``_put``) decides
        status = key[0]
        kept = type(status) is RunStatus and not any(values)
        if kept:
            hit = _HEADS.get(run.id)
            if hit is not None and hit[0] == key:
                at = run.updated_at
                if at is None:
                    return f"{hit[1]}{hit[2]}".encode()
                return f'{hit[1]},"updated_at":"{_cached(at) or _stamp(at)}"{hit[2]}'.encode()
        (_, wf_id, org_id, team_id, started_at, completed_at, triggered_by, created_at,
         idempotency_key, rerun_of_id, rerun_step_id, dry_run) = key
        _, out, err, label_map, metadata_map = values
        org = f',"org_id":{_QUOTED[org_id]}' if org_id else ""
        team = f',"team_id":{_QUOTED[team_id]}' if team_id else ""
        st = f'"{status._value_}"' if type(status) is RunStatus else _esc(str(status.value))
        started = ("" if started_at is None
                   else f',"started_at":"{_cached(started_at) or _stamp(started_at)}"')
        completed = ("" if completed_at is None else
                     f',"completed_at":"{_cached(completed_at) or _stamp(completed_at)}"')
        output = f',"output":{encode_value(out)}' if out else ""
        error = f',"error":{encode_value(err)}' if err else ""
        total = f',"total_cost":{encode_value(cost)}' if cost else ""
        trigger = f',"triggered_by":{_esc(triggered_by)}' if triggered_by else ""
        created = ("" if created_at is None
                   else f',"created_at":"{_cached(created_at) or _stamp(created_at)}"')
        v: Any = run.updated_at
        updated = "" if v is None else f',"updated_at":"{_cached(v) or _stamp(v)}"'
        labels = f',"labels":{encode_value(label_map)}' if label_map else ""
        metadata = f',"metadata":{encode_value(metadata_map)}' if metadata_map else ""
        idem = f',"idempotency_key":{_esc(idempotency_key)}' if idempotency_key else ""
        rerun_of = f',"rerun_of":{_esc(rerun_of_id)}' if rerun_of_id else ""
        rerun_step = f',"rerun_step":{_esc(rerun_step_id)}' if rerun_step_id else ""
        dry = ',"dry_run":true' if dry_run else ""
        v = run.id
        rid = _QUOTED[v]
        wf = _QUOTED[wf_id]
        head = (f'{{"id":{rid},"workflow_id":{wf}{org}{team},"status":{st}{started}'
                f'{completed}{output}{error}{total}{trigger}{created}')
        tail = f'{labels}{metadata}{idem}{rerun_of}{rerun_step}{dry}}}'
        if kept:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[run.id] = (key, head, tail)
        return f"{head}{updated}{tail}".encode()
    except _UNEXPECTED:
        return dumps(run.header_dict(with_input=False), where)


_STEP_FIELDS: Callable[[StepRun], tuple[Any, ...]] = attrgetter(
    "step_id", "status", "started_at", "completed_at", "next_attempt_at", "attempts", "input",
    "output", "error", "job_id", "item", "children")
"""A step's fields, read in one C call."""


def step_json(sr: StepRun, where: Where, *, with_children: bool = True) -> bytes:
    """``dumps(sr.to_dict(with_children=with_children), where)`` (built as ``header_json``)."""
    try:
        (step_id, status, started_at, completed_at, next_attempt_at, tries, given_input,
         out, err, job_id, item_value, children) = _STEP_FIELDS(sr)
        if type(tries) is not int:
            raise TypeError("attempts")  # a bool or an int enum: the encoder decides
        attempts = f',"attempts":{tries}' if tries else ""
        st = (_STATUS[status] if type(status) is StepStatus
              else f',"status":{_esc(str(status.value))}')
        started = ("" if started_at is None
                   else f',"started_at":"{_cached(started_at) or _stamp(started_at)}"')
        completed = ("" if completed_at is None else
                     f',"completed_at":"{_cached(completed_at) or _stamp(completed_at)}"')
        retry = ("" if next_attempt_at is None else
                 f',"next_attempt_at":"{_cached(next_attempt_at) or _stamp(next_attempt_at)}"')
        given = f',"input":{encode_value(given_input)}' if given_input else ""
        output = "" if out is None else f',"output":{_text(out)}'
        error = f',"error":{encode_value(err)}' if err else ""
        item = "" if item_value is None else f',"item":{_text(item_value)}'
        kids = ""
        if with_children and children:
            docs = {cid: c.to_dict() for cid, c in children.items()}
            kids = f',"children":{encode_value(docs)}'
        sid = _QUOTED[step_id]
        return (f'{{"step_id":{sid}{st}{started}{completed}{retry}'
                f'{attempts}{given}{output}{error}{_JOB_ID[job_id]}{item}{kids}}}').encode()
    except _UNEXPECTED:
        return dumps(sr.to_dict(with_children=with_children), where)


_EVENT_FIELDS: Callable[[TimelineEvent], tuple[Any, ...]] = attrgetter(
    "time", "type", "run_id", "workflow_id", "step_id", "job_id", "status", "result_ptr",
    "message", "data")
"""An event's fields, read in one C call."""

_NOT_YET: Any = object()
"""No event's time text made yet (``event_docs``: nothing to reuse)."""


def event_docs(events: Iterable[TimelineEvent], run_id: str,
               now_text: Callable[[], str | None], where: Where) -> list[bytes]:
    """The timeline texts of ``events`` as the run's timeline stores them (each as
    ``event_json``), with ``now_text()`` (asked once, for the first event without a time)
    as the time of those that have none.

    The events of one write are stamped with the same time: its text is made once per
    write, for the first event, and reused while the next event holds the very same
    object."""
    docs: list[bytes] = []
    now: str | None = None
    last_at = _NOT_YET
    time = ""
    for event in events:
        try:
            (at, kind, named, wf_id, step_id, job_id, status, result_ptr, text,
             data_value) = _EVENT_FIELDS(event)
            if at is not last_at:
                if at is None:
                    if now is None:
                        now = now_text()
                    time = _esc(now)
                else:
                    time = f'"{_cached(at) or _stamp(at)}"'
                last_at = at
            result = f',"result_ptr":{_esc(result_ptr)}' if result_ptr else ""
            message = f',"message":{_esc(text)}' if text else ""
            data = f',"data":{encode_value(data_value)}' if data_value else ""
            # the write's run id for an event that names none, even an empty one (None:
            # the general path's ``null``); not ``_RUN_ID``, which leaves an empty one out
            owner = "" if named else f',"run_id":{_QUOTED[run_id]}'
            docs.append(f'{{"time":{time},"type":{_QUOTED[kind]}{_RUN_ID[named]}'
                        f'{_WORKFLOW_ID[wf_id]}{_STEP_ID[step_id]}{_JOB_ID[job_id]}'
                        f'{_STATUS[status]}{result}{message}{data}{owner}}}'.encode())
        except _UNEXPECTED:
            last_at = _NOT_YET
            if event.time is None and now is None:
                now = now_text()
            doc = event.to_dict()
            if not doc.get("time"):
                doc["time"] = now
            if not doc.get("run_id"):
                doc["run_id"] = run_id
            docs.append(dumps(doc, where))
    return docs


def event_json(event: TimelineEvent, run_id: str, now: str | None, where: Where) -> bytes:
    """A timeline event as the run's timeline stores it: ``event.to_dict()`` with ``now``
    as its time if it has none and ``run_id`` (last) if it names no run (built as
    ``header_json``; ``event_docs`` of one event)."""
    return event_docs((event,), run_id, lambda: now, where)[0]


__all__ = ["event_docs", "event_json", "header_json", "step_json"]
