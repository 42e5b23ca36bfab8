"""Immutable snapshots of run parts, the form ``MemoryStore`` keeps them in.

A snapshot is taken on every write and thawed into fresh objects on every read, so nothing
the store keeps is ever shared with a caller. A step or a run header is kept as a flat tuple
of its fields: strings, numbers, datetimes and enum members are immutable and kept as they
are (no copy at all); only a mutable value (a non-empty dict or list: inputs, outputs,
errors, items, labels...) is frozen on its own, with ``marshal`` (version 2: no shared
references, so a thawed value is a tree, like ``json_copy`` makes) — one C call each way,
several times cheaper than copying the objects in Python, and the bytes cannot be mutated.
Empty maps are kept as ``None`` and thawed into fresh ones.

Most writes are plain: a step without input or error whose output and item are strings or
None (every step an engine writes for a job), a header whose output, error, labels and
metadata are empty (every step's but the last). Such a part is kept as the tuple one
``operator.attrgetter`` call reads its fields into, the status as its enum value
(``status._value_``): a C call rather than a Python expression per field (~50 → ~16
bytecodes a step). Any other part is that row with its maps and odd values frozen (the
longer row): ``thaw_*`` tell them apart by length, and tests compare both ways.

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
from operator import attrgetter
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

# A step is kept as one of two rows. Most steps (every one a W1 run writes) have no input,
# no error, and no output or item but a string: such a step is its fields read in one C
# call (``_STEP_ROW``, the status as its string: ``status._value_``), kept as it comes:
#   (step_id, status, started, completed, next_attempt, attempts, job_id, output, item)
# Any other step is that row with its output and item as fields, followed by its input
# and error as maps (``freeze(value) if value else None``): 11 fields.
StepSnapshot = tuple[Any, ...]
_STEP_ROW = attrgetter("step_id", "status._value_", "started_at", "completed_at",
                       "next_attempt_at", "attempts", "job_id", "output", "item")
# the rest of a plain step: no output or item but a string, no input, no error (compared
# with these at C speed: an empty map equals {}). The kinds come first, and the commonest
# first (a step just dispatched: no output; then one just done: a text output): a row that is
# not the one fails at its first field, by identity, before any map is compared.
_STEP_REST = attrgetter("output.__class__", "item.__class__", "input", "error")
_PLAIN_RESTS = tuple((*kinds, {}, {}) for kinds in (
    (type(None), type(None)), (str, type(None)), (type(None), str), (str, str)))
_PLAIN_STEP = 9  # the length of a plain step's row


def freeze_step(sr: StepRun) -> StepSnapshot:
    """``sr`` without its children (the store keeps those apart). Its step id is kept as it
    is: an empty one reads back as its key (``thaw_step``), as ``StepRun.from_dict`` does."""
    try:
        row: StepSnapshot = _STEP_ROW(sr)
    except AttributeError:  # a status that is no enum member (text)
        return _freeze_step_fully(sr)
    if _STEP_REST(sr) in _PLAIN_RESTS:
        return row
    return _freeze_step_fully(sr)


def _freeze_step_fully(sr: StepRun) -> StepSnapshot:
    """The 11-field row of any step (see ``StepSnapshot``)."""
    status = sr.status
    inp, error = sr.input, sr.error
    return (sr.step_id, getattr(status, "_value_", status), sr.started_at, sr.completed_at,
            sr.next_attempt_at, sr.attempts, sr.job_id, freeze_field(sr.output),
            freeze_field(sr.item), freeze(inp) if inp else None,
            freeze(error) if error else None)


def thaw_step(snap: StepSnapshot, key: str) -> StepRun:
    """A fresh ``StepRun`` (without children) from ``freeze_step``'s snapshot of the step
    kept at ``key`` (its step id when the step had none)."""
    if len(snap) == _PLAIN_STEP:
        sid, status, started, completed, next_attempt, attempts, job_id, output, item = snap
        inp: Any = {}
        err: Any = {}
    else:
        (sid, status, started, completed, next_attempt, attempts, job_id, output, item,
         inp, err) = snap
        output, item = thaw_field(output), thaw_field(item)
        inp, err = _thaw_map(inp), _thaw_map(err)
    step = _new(StepRun)
    step.__dict__ = {
        "step_id": sid or key,
        "status": _STEP_STATUS.get(status, status) if status.__class__ is str else status,
        "started_at": started, "completed_at": completed,
        "next_attempt_at": next_attempt, "attempts": attempts,
        "input": inp, "output": output, "error": err, "job_id": job_id, "item": item,
        "children": {},
    }
    return step


# --------------------------------------------------------------------------- run headers

# A run header (every field but steps, context and input) is kept like a step: a run whose
# output, error, labels and metadata are empty (most writes: a step's) as its other fields
# read in one C call, the status as its string:
#   (id, workflow_id, org_id, team_id, total_cost, triggered_by, idempotency_key, rerun_of,
#    rerun_step, dry_run, status, started_at, completed_at, created_at, updated_at)
# any other with those four maps frozen after them (None when empty): 19 fields.
HeaderSnapshot = tuple[Any, ...]
_HEADER_FIELDS = ("id", "workflow_id", "org_id", "team_id", "total_cost", "triggered_by",
                  "idempotency_key", "rerun_of", "rerun_step", "dry_run", "status",
                  "started_at", "completed_at", "created_at", "updated_at")
H_WORKFLOW, H_ORG, H_IDEMPOTENCY_KEY, H_STATUS, H_CREATED, H_UPDATED = 1, 2, 6, 10, 13, 14
_HEADER_ROW = attrgetter(*_HEADER_FIELDS[:H_STATUS], "status._value_",
                         *_HEADER_FIELDS[H_STATUS + 1:])
_HEADER_RAW = attrgetter(*_HEADER_FIELDS)
_HEADER_MAPS = attrgetter("output", "error", "labels", "metadata")
_NO_MAPS: tuple[Any, ...] = ({}, {}, {}, {})  # compared with, never handed out
_PLAIN_HEADER = len(_HEADER_FIELDS)


def freeze_header(run: WorkflowRun) -> HeaderSnapshot:
    """Every field of ``run`` but ``steps``, ``context`` and ``input`` (kept apart: the input
    never changes after creation, and a step event rewrites only the header)."""
    try:
        row: HeaderSnapshot = _HEADER_ROW(run)
    except AttributeError:  # a status that is no enum member (text)
        return _freeze_header_fully(run)
    if _HEADER_MAPS(run) == _NO_MAPS:
        return row
    return _freeze_header_fully(run)


def _freeze_header_fully(run: WorkflowRun) -> HeaderSnapshot:
    """The 19-field row of any header (see ``HeaderSnapshot``)."""
    row = _HEADER_RAW(run)
    status = row[H_STATUS]
    output, error, labels, metadata = _HEADER_MAPS(run)
    return (*row[:H_STATUS], getattr(status, "_value_", status), *row[H_STATUS + 1:],
            freeze(output) if output else None, freeze(error) if error else None,
            freeze(labels) if labels else None, freeze(metadata) if metadata else None)


def thaw_header(snap: HeaderSnapshot, input_: Frozen | None) -> WorkflowRun:
    """A fresh ``WorkflowRun`` (no steps, empty context) from ``freeze_header``'s snapshot and
    the frozen input (None: no input)."""
    if len(snap) == _PLAIN_HEADER:
        (rid, workflow_id, org_id, team_id, total_cost, triggered_by, idempotency_key,
         rerun_of, rerun_step, dry_run, status, started, completed, created, updated) = snap
        output: Any = {}
        error: Any = {}
        labels: Any = {}
        metadata: Any = {}
    else:
        (rid, workflow_id, org_id, team_id, total_cost, triggered_by, idempotency_key,
         rerun_of, rerun_step, dry_run, status, started, completed, created, updated,
         output, error, labels, metadata) = snap
        output, error = _thaw_map(output), _thaw_map(error)
        labels, metadata = _thaw_map(labels), _thaw_map(metadata)
    run = _new(WorkflowRun)
    run.__dict__ = {
        "id": rid, "workflow_id": workflow_id, "org_id": org_id, "team_id": team_id,
        "input": thaw(input_) if input_ is not None else {},
        "context": {},
        "status": _RUN_STATUS.get(status, status) if status.__class__ is str else status,
        "started_at": started, "completed_at": completed,
        "output": output, "error": error,
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
