"""Immutable snapshots of run parts, the form ``MemoryStore`` keeps them in.

A snapshot is taken on every write and thawed into fresh objects on every read, so nothing
the store keeps is ever shared with a caller. The JSON-shaped parts (inputs, outputs,
errors, items, context entries, ids...) are encoded with ``marshal`` (version 2: no shared
references, so a thawed value is a tree, like ``json_copy`` makes): one C call each way,
several times cheaper than copying the objects in Python, and the bytes cannot be mutated.
Datetimes and enum members are immutable and kept as they are.

``marshal`` refuses what it cannot encode (custom objects, ``str``/``dict`` subclasses such
as enum members or an ``OrderedDict`` slipped into an input): such a value is kept as a
``json_copy`` instead (``Copied``), and thawed with another one. (``marshal`` turns a
``bytearray`` into ``bytes``: neither is a JSON value, and no other store keeps them.)

A thawed part equals what a ``to_dict``/``from_dict`` round trip of the saved part gives.
"""

from __future__ import annotations

import marshal
from datetime import datetime
from typing import Any

from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun, json_copy

_new = object.__new__  # the thawed documents' __dict__ is filled in directly: no __init__


class Copied:
    """A value ``marshal`` cannot encode, kept as a private deep copy."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = json_copy(value)


Frozen = bytes | Copied


def freeze(value: Any) -> Frozen:
    """An immutable snapshot of a JSON-shaped value."""
    try:
        return marshal.dumps(value, 2)
    except ValueError:  # unmarshallable (or too deeply nested): copy it instead
        return Copied(value)


def thaw(frozen: Frozen) -> Any:
    """A fresh copy of the value ``freeze`` was given."""
    if type(frozen) is bytes:
        return marshal.loads(frozen)
    assert isinstance(frozen, Copied)
    return json_copy(frozen.value)


# ----------------------------------------------------------------------------- step runs

StepSnapshot = tuple[Frozen, StepStatus, datetime | None, datetime | None, datetime | None]


def freeze_step(sr: StepRun, step_id: str) -> StepSnapshot:
    """``sr`` without its children (the store keeps those apart); an empty step id takes
    ``step_id`` (its key), as ``StepRun.from_dict`` does."""
    inp, err = sr.input, sr.error
    return (freeze((sr.step_id or step_id, sr.attempts, inp or None, sr.output, err or None,
                    sr.job_id, sr.item)),
            sr.status, sr.started_at, sr.completed_at, sr.next_attempt_at)


def thaw_step(snap: StepSnapshot) -> StepRun:
    """A fresh ``StepRun`` (without children) from ``freeze_step``'s snapshot."""
    blob, status, started, completed, next_attempt = snap
    sid, attempts, inp, output, err, job_id, item = thaw(blob)
    step = _new(StepRun)
    step.__dict__ = {
        "step_id": sid, "status": status, "started_at": started, "completed_at": completed,
        "next_attempt_at": next_attempt, "attempts": attempts,
        "input": inp if inp is not None else {}, "output": output,
        "error": err if err is not None else {}, "job_id": job_id, "item": item,
        "children": {},
    }
    return step


# --------------------------------------------------------------------------- run headers

HeaderSnapshot = tuple[Frozen, RunStatus, datetime | None, datetime | None, datetime | None,
                       datetime | None]


def freeze_header(run: WorkflowRun) -> HeaderSnapshot:
    """Every field of ``run`` but ``steps``, ``context`` and ``input`` (kept apart: the input
    never changes after creation, and a step event rewrites only the header)."""
    output, error, labels, metadata = run.output, run.error, run.labels, run.metadata
    return (freeze((run.id, run.workflow_id, run.org_id, run.team_id, output or None,
                    error or None, run.total_cost, run.triggered_by, labels or None,
                    metadata or None, run.idempotency_key, run.rerun_of, run.rerun_step,
                    run.dry_run)),
            run.status, run.started_at, run.completed_at, run.created_at, run.updated_at)


def thaw_header(snap: HeaderSnapshot, input_: Frozen | None) -> WorkflowRun:
    """A fresh ``WorkflowRun`` (no steps, empty context) from ``freeze_header``'s snapshot and
    the frozen input (None: no input)."""
    blob, status, started, completed, created, updated = snap
    (rid, workflow_id, org_id, team_id, output, error, total_cost, triggered_by, labels,
     metadata, idempotency_key, rerun_of, rerun_step, dry_run) = thaw(blob)
    run = _new(WorkflowRun)
    run.__dict__ = {
        "id": rid, "workflow_id": workflow_id, "org_id": org_id, "team_id": team_id,
        "input": thaw(input_) if input_ is not None else {},
        "context": {}, "status": status, "started_at": started, "completed_at": completed,
        "output": output if output is not None else {},
        "error": error if error is not None else {},
        "steps": {}, "total_cost": float(total_cost) if total_cost else 0.0,
        "triggered_by": triggered_by, "created_at": created, "updated_at": updated,
        "labels": {str(k): str(v) for k, v in labels.items()} if labels else {},
        "metadata": {str(k): str(v) for k, v in metadata.items()} if metadata else {},
        "idempotency_key": idempotency_key, "rerun_of": rerun_of, "rerun_step": rerun_step,
        "dry_run": bool(dry_run),
    }
    return run


def header_idempotency_key(snap: HeaderSnapshot) -> str:
    return str(thaw(snap[0])[10] or "")


__all__ = [
    "Copied",
    "Frozen",
    "HeaderSnapshot",
    "StepSnapshot",
    "freeze",
    "freeze_header",
    "freeze_step",
    "header_idempotency_key",
    "thaw",
    "thaw_header",
    "thaw_step",
]
