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

from cordtrio.fields import _format
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun

from .run_hash import Where, dumps, encode_value

_esc: Callable[[Any], str] = encode_basestring
"""The string escape of ``dumps`` (``ensure_ascii=False``); raises TypeError on a non-string,
which sends the part down the general path."""

_stamp: Callable[[datetime], str] = _format  # type: ignore[assignment]
"""A timestamp's text (``_format``, cached; never None for a datetime). Timestamps (ISO
8601) and status values never need escaping: they are quoted as they are."""

_UNEXPECTED = (TypeError, ValueError, AttributeError)
"""What a field of an unexpected type raises on the direct path (the general path then
writes it, or raises the error ``dumps`` raises)."""


def _text(value: Any) -> str:
    """A value that is usually a string (an output, a status)."""
    return _esc(value) if type(value) is str else encode_value(value)


def header_json(run: WorkflowRun, where: Where) -> bytes:
    """``dumps(run.header_dict(with_input=False), where)``."""
    try:
        status = run.status
        cost = run.total_cost
        if type(cost) is not float and type(cost) is not int:
            raise TypeError("total_cost")  # header_dict's empty test (``_put``) decides
        s = '{"id":' + _esc(run.id) + ',"workflow_id":' + _esc(run.workflow_id)
        if run.org_id:
            s += ',"org_id":' + _esc(run.org_id)
        if run.team_id:
            s += ',"team_id":' + _esc(run.team_id)
        s += ',"status":' + ('"' + status._value_ + '"' if type(status) is RunStatus
                                 else _esc(str(status.value)))
        if run.started_at is not None:
            s += ',"started_at":"' + _stamp(run.started_at) + '"'
        if run.completed_at is not None:
            s += ',"completed_at":"' + _stamp(run.completed_at) + '"'
        if run.output:
            s += ',"output":' + encode_value(run.output)
        if run.error:
            s += ',"error":' + encode_value(run.error)
        if cost:
            s += ',"total_cost":' + encode_value(cost)
        if run.triggered_by:
            s += ',"triggered_by":' + _esc(run.triggered_by)
        if run.created_at is not None:
            s += ',"created_at":"' + _stamp(run.created_at) + '"'
        if run.updated_at is not None:
            s += ',"updated_at":"' + _stamp(run.updated_at) + '"'
        if run.labels:
            s += ',"labels":' + encode_value(run.labels)
        if run.metadata:
            s += ',"metadata":' + encode_value(run.metadata)
        if run.idempotency_key:
            s += ',"idempotency_key":' + _esc(run.idempotency_key)
        if run.rerun_of:
            s += ',"rerun_of":' + _esc(run.rerun_of)
        if run.rerun_step:
            s += ',"rerun_step":' + _esc(run.rerun_step)
        if run.dry_run:
            s += ',"dry_run":true'
        return (s + "}").encode()
    except _UNEXPECTED:
        return dumps(run.header_dict(with_input=False), where)


def step_json(sr: StepRun, where: Where, *, with_children: bool = True) -> bytes:
    """``dumps(sr.to_dict(with_children=with_children), where)``."""
    try:
        status = sr.status
        attempts = sr.attempts
        if type(attempts) is not int:
            raise TypeError("attempts")  # a bool or an int enum: the encoder decides
        s = ('{"step_id":' + _esc(sr.step_id) + ',"status":'
             + ('"' + status._value_ + '"' if type(status) is StepStatus
                else _esc(str(status.value))))
        if sr.started_at is not None:
            s += ',"started_at":"' + _stamp(sr.started_at) + '"'
        if sr.completed_at is not None:
            s += ',"completed_at":"' + _stamp(sr.completed_at) + '"'
        if sr.next_attempt_at is not None:
            s += ',"next_attempt_at":"' + _stamp(sr.next_attempt_at) + '"'
        if attempts:
            s += ',"attempts":' + str(attempts)
        if sr.input:
            s += ',"input":' + encode_value(sr.input)
        if sr.output is not None:
            s += ',"output":' + _text(sr.output)
        if sr.error:
            s += ',"error":' + encode_value(sr.error)
        if sr.job_id:
            s += ',"job_id":' + _esc(sr.job_id)
        if sr.item is not None:
            s += ',"item":' + _text(sr.item)
        if with_children and sr.children:
            kids = {cid: c.to_dict() for cid, c in sr.children.items()}
            s += ',"children":' + encode_value(kids)
        return (s + "}").encode()
    except _UNEXPECTED:
        return dumps(sr.to_dict(with_children=with_children), where)


def event_json(event: TimelineEvent, run_id: str, now: str | None, where: Where) -> bytes:
    """A timeline event as the run's timeline stores it: ``event.to_dict()`` with ``now``
    as its time if it has none and ``run_id`` (last) if it names no run."""
    try:
        time = event.time
        s = ('{"time":' + (_esc(now) if time is None else '"' + _stamp(time) + '"')
             + ',"type":' + _esc(event.type))
        if event.run_id:
            s += ',"run_id":' + _esc(event.run_id)
        if event.workflow_id:
            s += ',"workflow_id":' + _esc(event.workflow_id)
        if event.step_id:
            s += ',"step_id":' + _esc(event.step_id)
        if event.job_id:
            s += ',"job_id":' + _esc(event.job_id)
        if event.status:
            s += ',"status":' + _esc(event.status)
        if event.result_ptr:
            s += ',"result_ptr":' + _esc(event.result_ptr)
        if event.message:
            s += ',"message":' + _esc(event.message)
        if event.data:
            s += ',"data":' + encode_value(event.data)
        if not event.run_id:
            s += ',"run_id":' + _esc(run_id)
        return (s + "}").encode()
    except _UNEXPECTED:
        doc = event.to_dict()
        if not doc.get("time"):
            doc["time"] = now
        if not doc.get("run_id"):
            doc["run_id"] = run_id
        return dumps(doc, where)


__all__ = ["event_json", "header_json", "step_json"]
