"""Immutable snapshots of run parts, the form ``MemoryStore`` keeps them in.

A snapshot is taken on every write and thawed into fresh objects on every read, so nothing
the store keeps is ever shared with a caller. A step or a run header is kept as a flat tuple
of its fields: strings, numbers, datetimes and enum members are immutable and kept as they
are (no copy at all); only a mutable value (a non-empty dict or list: inputs, outputs,
errors, items, labels...) is frozen on its own, with ``marshal`` (version 2: no shared
references, so a thawed value is a tree, like ``json_copy`` makes) — one C call each way,
several times cheaper than copying the objects in Python, and the bytes cannot be mutated.
Empty maps are kept as ``None`` and thawed into fresh ones.

Why snapshots rather than live model objects copied on read: a step's write then costs one
tuple (most of a step's fields are immutable), and a tuple of strings, numbers, datetimes
and bytes is untracked by the cyclic garbage collector the first time it sees it, whose
full collections would otherwise walk every stored run's objects again and again. (That is
also why a status is kept as its string, not as the enum member, an object the collector
tracks.)

``marshal`` refuses what it cannot encode (custom objects, ``str``/``dict`` subclasses such
as enum members or an ``OrderedDict`` slipped into an input): such a value is kept as a
``json_copy`` instead (``Copied``), and thawed with another one. (``marshal`` turns a
``bytearray`` into ``bytes``: neither is a JSON value, and no other store keeps them.)

A thawed part equals what a ``to_dict``/``from_dict`` round trip of the saved part gives.
"""

from __future__ import annotations

import marshal
from typing import Any

from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun, json_copy

_new = object.__new__  # the thawed documents' __dict__ is filled in directly: no __init__
_STEP_STATUS: dict[str, Any] = dict(StepStatus._value2member_map_)  # stored text -> member
_RUN_STATUS: dict[str, Any] = dict(RunStatus._value2member_map_)
_dumps, _loads = marshal.dumps, marshal.loads


class Copied:
    """A value ``marshal`` cannot encode, kept as a private deep copy."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = json_copy(value)


Frozen = bytes | Copied


def freeze(value: Any) -> Frozen:
    """An immutable snapshot of a JSON-shaped value."""
    try:
        return _dumps(value, 2)
    except ValueError:  # unmarshallable (or too deeply nested): copy it instead
        return Copied(value)


def thaw(frozen: Frozen) -> Any:
    """A fresh copy of the value ``freeze`` was given."""
    if type(frozen) is bytes:
        return _loads(frozen)
    assert isinstance(frozen, Copied)
    return json_copy(frozen.value)


# A field value as a snapshot keeps it: None, an immutable scalar as it is, anything else
# frozen (bytes or Copied). ``bytes`` is never kept as is, so a thawed bytes is a blob.
Field = Any
_SCALARS = frozenset({str, int, float, bool})


def freeze_field(value: Any) -> Field:
    """``value`` itself when it is None or an immutable scalar, else ``freeze(value)``."""
    if value is None or type(value) in _SCALARS:
        return value
    return freeze(value)


def thaw_field(field: Field) -> Any:
    """The value ``freeze_field`` was given (a fresh copy when it was mutable)."""
    cls = type(field)
    if cls is bytes:
        return _loads(field)
    if cls is Copied:
        return json_copy(field.value)
    return field


def _thaw_map(field: Field) -> Any:
    """A map kept as ``freeze(value) if value else None``: a fresh copy, ``{}`` for None."""
    if field is None:
        return {}
    return _loads(field) if type(field) is bytes else thaw_field(field)


# ----------------------------------------------------------------------------- step runs

# (step_id, status, started, completed, next_attempt, attempts, job_id, input, output,
#  error, item): input and error as maps, output and item as fields
StepSnapshot = tuple[Any, ...]


def freeze_step(sr: StepRun, step_id: str) -> StepSnapshot:
    """``sr`` without its children (the store keeps those apart); an empty step id takes
    ``step_id`` (its key), as ``StepRun.from_dict`` does."""
    output, item, status = sr.output, sr.item, sr.status
    return (sr.step_id or step_id,
            status._value_ if status.__class__ is StepStatus else status,
            sr.started_at, sr.completed_at,
            sr.next_attempt_at, sr.attempts, sr.job_id,
            freeze(sr.input) if sr.input else None,
            output if output is None or type(output) is str else freeze_field(output),
            freeze(sr.error) if sr.error else None,
            item if item is None or type(item) is str else freeze_field(item))


def thaw_step(snap: StepSnapshot) -> StepRun:
    """A fresh ``StepRun`` (without children) from ``freeze_step``'s snapshot."""
    sid, status, started, completed, next_attempt, attempts, job_id, inp, output, err, item \
        = snap
    step = _new(StepRun)
    step.__dict__ = {
        "step_id": sid,
        "status": _STEP_STATUS.get(status, status) if status.__class__ is str else status,
        "started_at": started, "completed_at": completed,
        "next_attempt_at": next_attempt, "attempts": attempts,
        "input": _thaw_map(inp), "output": output if type(output) is str else thaw_field(output),
        "error": _thaw_map(err), "job_id": job_id,
        "item": item if item is None or type(item) is str else thaw_field(item),
        "children": {},
    }
    return step


# --------------------------------------------------------------------------- run headers

# (id, workflow_id, org_id, team_id, output, error, total_cost, triggered_by, labels,
#  metadata, idempotency_key, rerun_of, rerun_step, dry_run, status, started_at,
#  completed_at, created_at, updated_at): the four maps frozen (None when empty)
HeaderSnapshot = tuple[Any, ...]
H_WORKFLOW, H_ORG, H_IDEMPOTENCY_KEY = 1, 2, 10
H_STATUS, H_CREATED, H_UPDATED = 14, 17, 18


def freeze_header(run: WorkflowRun) -> HeaderSnapshot:
    """Every field of ``run`` but ``steps``, ``context`` and ``input`` (kept apart: the input
    never changes after creation, and a step event rewrites only the header)."""
    output, error, labels, metadata = run.output, run.error, run.labels, run.metadata
    status = run.status
    return (run.id, run.workflow_id, run.org_id, run.team_id,
            freeze(output) if output else None, freeze(error) if error else None,
            run.total_cost, run.triggered_by,
            freeze(labels) if labels else None, freeze(metadata) if metadata else None,
            run.idempotency_key, run.rerun_of, run.rerun_step, run.dry_run,
            status._value_ if status.__class__ is RunStatus else status,
            run.started_at, run.completed_at, run.created_at, run.updated_at)


def thaw_header(snap: HeaderSnapshot, input_: Frozen | None) -> WorkflowRun:
    """A fresh ``WorkflowRun`` (no steps, empty context) from ``freeze_header``'s snapshot and
    the frozen input (None: no input)."""
    (rid, workflow_id, org_id, team_id, output, error, total_cost, triggered_by, labels,
     metadata, idempotency_key, rerun_of, rerun_step, dry_run, status, started, completed,
     created, updated) = snap
    labels = _thaw_map(labels)
    metadata = _thaw_map(metadata)
    run = _new(WorkflowRun)
    run.__dict__ = {
        "id": rid, "workflow_id": workflow_id, "org_id": org_id, "team_id": team_id,
        "input": thaw(input_) if input_ is not None else {},
        "context": {},
        "status": _RUN_STATUS.get(status, status) if status.__class__ is str else status,
        "started_at": started, "completed_at": completed,
        "output": _thaw_map(output), "error": _thaw_map(error),
        "steps": {}, "total_cost": float(total_cost) if total_cost else 0.0,
        "triggered_by": triggered_by, "created_at": created, "updated_at": updated,
        "labels": {str(k): str(v) for k, v in labels.items()} if labels else {},
        "metadata": {str(k): str(v) for k, v in metadata.items()} if metadata else {},
        "idempotency_key": idempotency_key, "rerun_of": rerun_of, "rerun_step": rerun_step,
        "dry_run": bool(dry_run),
    }
    return run


def header_idempotency_key(snap: HeaderSnapshot) -> str:
    return str(snap[H_IDEMPOTENCY_KEY] or "")


__all__ = [
    "H_CREATED",
    "H_ORG",
    "H_STATUS",
    "H_UPDATED",
    "H_WORKFLOW",
    "Copied",
    "Frozen",
    "HeaderSnapshot",
    "StepSnapshot",
    "freeze",
    "freeze_field",
    "freeze_header",
    "freeze_step",
    "header_idempotency_key",
    "thaw",
    "thaw_field",
    "thaw_header",
    "thaw_step",
]
