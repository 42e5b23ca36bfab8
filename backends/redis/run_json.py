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

from collections.abc import Callable
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

from cordtrio.fields import RECENT_TS_TEXTS, timestamp_text
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun

from .run_hash import Where, dumps, encode_value

_esc: Callable[[Any], str] = encode_basestring
"""The string escape of ``dumps`` (``ensure_ascii=False``); raises TypeError on a non-string,
which sends the part down the general path."""

_stamp: Callable[[datetime], str] = timestamp_text  # type: ignore[assignment]
"""A timestamp's text (``timestamp_text``, cached; never None for a datetime). Timestamps (ISO
8601) and status values never need escaping: they are quoted as they are."""

_cached = RECENT_TS_TEXTS.get
"""``timestamp_text``'s cache, looked up first (``_cached(ts) or _stamp(ts)``): a hit costs a
``dict.get`` instead of a Python call, and a step stamps ten fields, most of them hits."""

_QUOTED: dict[str, str] = {}
_QUOTED_MAX = 8192
_quoted = _QUOTED.get
"""The escaped texts of the ids a step writes again and again (the run's and workflow's id
in the header and every event, step and job ids, statuses, event types), looked up first
(``_quoted(v) or _quote(v)``): a hit is a ``dict.get`` instead of an escape (~1k
instructions), and a step writes ~18 of them. Emptied when full; with hundreds of runs in
flight a job id is written again (its completion) after a few thousand other ids."""


def _quote(value: Any) -> str:
    """``_esc(value)``, kept in ``_QUOTED`` (a non-string raises, as ``_esc`` does)."""
    text = _esc(value)
    if len(_QUOTED) >= _QUOTED_MAX:
        _QUOTED.clear()
    _QUOTED[value] = text
    return text


_UNEXPECTED = (TypeError, ValueError, AttributeError)
"""What a field of an unexpected type raises on the direct path (the general path then
writes it, or raises the error ``dumps`` raises)."""


def _text(value: Any) -> str:
    """A value that is usually a string (an output, a status)."""
    return _esc(value) if type(value) is str else encode_value(value)


_NUMBERS = (float, int)
_HEADS: dict[str, tuple[tuple[Any, ...], str, str]] = {}
_HEADS_MAX = 4096
"""Per run id: the fields a header was last built from and its text before and after its
``updated_at``. A step's write usually changes nothing else in the header: when the run's
fields are equal to those (and the ones with values of their own — output, error, labels,
metadata, a cost — are empty), the header is those texts around the new ``updated_at``.
Equal values give the same text (a timestamp's is its UTC time: ``timestamp_text``, itself
cached by equality); the kinds whose equal values may be written differently (the status's
type, a cost's) are checked. Emptied when full."""


def header_json(run: WorkflowRun, where: Where) -> bytes:
    """``dumps(run.header_dict(with_input=False), where)``.

    Each optional field is its text or ``""``, and one f-string joins them: one string
    built, instead of a concatenation per field; the text around ``updated_at`` is kept
    per run (``_HEADS``)."""
    try:
        status = run.status
        cost = run.total_cost
        key: tuple[Any, ...] | None = None
        if (type(status) is RunStatus and not cost and type(cost) in _NUMBERS
                and not run.output and not run.error and not run.labels and not run.metadata):
            key = (status, run.workflow_id, run.org_id, run.team_id, run.started_at,
                   run.completed_at, run.triggered_by, run.created_at, run.idempotency_key,
                   run.rerun_of, run.rerun_step, run.dry_run)
            hit = _HEADS.get(run.id)
            if hit is not None and hit[0] == key:
                at = run.updated_at
                if at is None:
                    return f"{hit[1]}{hit[2]}".encode()
                return f'{hit[1]},"updated_at":"{_cached(at) or _stamp(at)}"{hit[2]}'.encode()
        if type(cost) is not float and type(cost) is not int:
            raise TypeError("total_cost")  # header_dict's empty test (``_put``) decides
        v: Any = run.org_id
        org = f',"org_id":{_quoted(v) or _quote(v)}' if v else ""
        v = run.team_id
        team = f',"team_id":{_quoted(v) or _quote(v)}' if v else ""
        st = f'"{status._value_}"' if type(status) is RunStatus else _esc(str(status.value))
        v = run.started_at
        started = "" if v is None else f',"started_at":"{_cached(v) or _stamp(v)}"'
        v = run.completed_at
        completed = "" if v is None else f',"completed_at":"{_cached(v) or _stamp(v)}"'
        v = run.output
        output = f',"output":{encode_value(v)}' if v else ""
        v = run.error
        error = f',"error":{encode_value(v)}' if v else ""
        total = f',"total_cost":{encode_value(cost)}' if cost else ""
        v = run.triggered_by
        trigger = f',"triggered_by":{_esc(v)}' if v else ""
        v = run.created_at
        created = "" if v is None else f',"created_at":"{_cached(v) or _stamp(v)}"'
        v = run.updated_at
        updated = "" if v is None else f',"updated_at":"{_cached(v) or _stamp(v)}"'
        v = run.labels
        labels = f',"labels":{encode_value(v)}' if v else ""
        v = run.metadata
        metadata = f',"metadata":{encode_value(v)}' if v else ""
        v = run.idempotency_key
        idem = f',"idempotency_key":{_esc(v)}' if v else ""
        v = run.rerun_of
        rerun_of = f',"rerun_of":{_esc(v)}' if v else ""
        v = run.rerun_step
        rerun_step = f',"rerun_step":{_esc(v)}' if v else ""
        dry = ',"dry_run":true' if run.dry_run else ""
        v = run.id
        rid = _quoted(v) or _quote(v)
        v = run.workflow_id
        wf = _quoted(v) or _quote(v)
        head = (f'{{"id":{rid},"workflow_id":{wf}{org}{team},"status":{st}{started}'
                f'{completed}{output}{error}{total}{trigger}{created}')
        tail = f'{labels}{metadata}{idem}{rerun_of}{rerun_step}{dry}}}'
        if key is not None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[run.id] = (key, head, tail)
        return f"{head}{updated}{tail}".encode()
    except _UNEXPECTED:
        return dumps(run.header_dict(with_input=False), where)


def step_json(sr: StepRun, where: Where, *, with_children: bool = True) -> bytes:
    """``dumps(sr.to_dict(with_children=with_children), where)`` (built as ``header_json``)."""
    try:
        status = sr.status
        v: Any = sr.attempts
        if type(v) is not int:
            raise TypeError("attempts")  # a bool or an int enum: the encoder decides
        attempts = f',"attempts":{v}' if v else ""
        st = f'"{status._value_}"' if type(status) is StepStatus else _esc(str(status.value))
        v = sr.started_at
        started = "" if v is None else f',"started_at":"{_cached(v) or _stamp(v)}"'
        v = sr.completed_at
        completed = "" if v is None else f',"completed_at":"{_cached(v) or _stamp(v)}"'
        v = sr.next_attempt_at
        retry = "" if v is None else f',"next_attempt_at":"{_cached(v) or _stamp(v)}"'
        v = sr.input
        given = f',"input":{encode_value(v)}' if v else ""
        v = sr.output
        output = "" if v is None else f',"output":{_text(v)}'
        v = sr.error
        error = f',"error":{encode_value(v)}' if v else ""
        v = sr.job_id
        job = f',"job_id":{_quoted(v) or _quote(v)}' if v else ""
        v = sr.item
        item = "" if v is None else f',"item":{_text(v)}'
        kids = ""
        if with_children and sr.children:
            docs = {cid: c.to_dict() for cid, c in sr.children.items()}
            kids = f',"children":{encode_value(docs)}'
        v = sr.step_id
        sid = _quoted(v) or _quote(v)
        return (f'{{"step_id":{sid},"status":{st}{started}{completed}{retry}'
                f'{attempts}{given}{output}{error}{job}{item}{kids}}}').encode()
    except _UNEXPECTED:
        return dumps(sr.to_dict(with_children=with_children), where)


def event_json(event: TimelineEvent, run_id: str, now: str | None, where: Where) -> bytes:
    """A timeline event as the run's timeline stores it: ``event.to_dict()`` with ``now``
    as its time if it has none and ``run_id`` (last) if it names no run (built as
    ``header_json``)."""
    try:
        v: Any = event.time
        time = _esc(now) if v is None else f'"{_cached(v) or _stamp(v)}"'
        named = event.run_id
        rid = f',"run_id":{_quoted(named) or _quote(named)}' if named else ""
        v = event.workflow_id
        wf = f',"workflow_id":{_quoted(v) or _quote(v)}' if v else ""
        v = event.step_id
        step = f',"step_id":{_quoted(v) or _quote(v)}' if v else ""
        v = event.job_id
        job = f',"job_id":{_quoted(v) or _quote(v)}' if v else ""
        v = event.status
        st = f',"status":{_quoted(v) or _quote(v)}' if v else ""
        v = event.result_ptr
        result = f',"result_ptr":{_esc(v)}' if v else ""
        v = event.message
        message = f',"message":{_esc(v)}' if v else ""
        v = event.data
        data = f',"data":{encode_value(v)}' if v else ""
        owner = "" if named else f',"run_id":{_quoted(run_id) or _quote(run_id)}'
        v = event.type
        kind = _quoted(v) or _quote(v)
        return (f'{{"time":{time},"type":{kind}{rid}{wf}{step}{job}{st}{result}'
                f'{message}{data}{owner}}}').encode()
    except _UNEXPECTED:
        doc = event.to_dict()
        if not doc.get("time"):
            doc["time"] = now
        if not doc.get("run_id"):
            doc["run_id"] = run_id
        return dumps(doc, where)


__all__ = ["event_json", "header_json", "step_json"]
