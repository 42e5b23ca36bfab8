"""Run documents: ``WorkflowRun``, its ``StepRun``s, ``TimelineEvent`` audit records, and
the ``RunStatus``/``StepStatus`` enums with their terminal sets.

Field names are the snake_case keys of SPEC §1. ``to_dict`` omits empty values (like Go's
``omitempty``) to keep stored documents small; ``from_dict`` accepts any subset of keys.
The definition-side documents live in ``workflow_doc``; ``cordtrio.model`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from .errors import NotFoundError, ValidationError
from .fields import (
    _dict,
    _num,
    _put,
    _str_enum,
    _ts,
    json_copy,
    timestamp_text,
)

_T = TypeVar("_T")


def _made(cls: type[_T], fields: dict[str, Any]) -> _T:
    """``cls(**fields)`` for a document class: its ``__dict__`` set directly, as ``clone``
    does (a dataclass ``__init__`` with 12-22 keyword arguments costs several times more);
    a subclass, which may add fields or ``__post_init__``, is built through ``__init__``."""
    if cls is StepRun or cls is WorkflowRun:
        made = _new(cls)
        made.__dict__ = fields
        return made  # type: ignore[no-any-return]
    return cls(**fields)


_STR_ONLY = frozenset((str,))
_DICT_OR_NONE = frozenset((dict, type(None)))
_new = object.__new__  # clone() copies __dict__ directly: no __init__ call for 12-23 fields


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    is_terminal: bool
    """Set on every member below (a plain attribute: read on every event, where a property
    costs a descriptor call, ~4x slower on Python 3.11)."""


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    is_terminal: bool
    """Set on every member below, like ``RunStatus.is_terminal``."""


_TERMINAL_RUN = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)
_TERMINAL_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT}
)
for _run_status in RunStatus:
    _run_status.is_terminal = _run_status in _TERMINAL_RUN
for _step_status in StepStatus:
    _step_status.is_terminal = _step_status in _TERMINAL_STEP
del _run_status, _step_status




@dataclass
class StepRun:
    """The state of one step (or one for-each child) inside a run."""

    step_id: str = ""
    status: StepStatus = StepStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None
    attempts: int = 0
    input: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    item: Any = None
    children: dict[str, StepRun] = field(default_factory=dict)

    def to_dict(self, *, with_children: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"step_id": self.step_id, "status": str(self.status.value)}
        if self.started_at is not None:
            out["started_at"] = timestamp_text(self.started_at)
        if self.completed_at is not None:
            out["completed_at"] = timestamp_text(self.completed_at)
        if self.next_attempt_at is not None:
            out["next_attempt_at"] = timestamp_text(self.next_attempt_at)
        if self.attempts:
            out["attempts"] = self.attempts
        if self.input:
            out["input"] = json_copy(self.input)
        if self.output is not None:
            out["output"] = json_copy(self.output)
        if self.error:
            out["error"] = json_copy(self.error)
        if self.job_id:
            out["job_id"] = self.job_id
        if self.item is not None:
            out["item"] = json_copy(self.item)
        if with_children and self.children:
            out["children"] = {cid: c.to_dict() for cid, c in self.children.items()}
        return out

    def clone(self, *, with_children: bool = True, step_id: str = "") -> StepRun:
        """A deep copy equal to ``from_dict(to_dict(), step_id)`` (an empty ``step_id`` takes
        the one given, as ``from_dict`` takes the key), without formatting or parsing
        anything: in-memory stores keep step runs as objects and copy them with this on every
        write and read. Datetimes and enum members are immutable and shared."""
        inp, out, err, item, kids = self.input, self.output, self.error, self.item, self.children
        fields = self.__dict__.copy()  # strings, numbers, datetimes, the enum: shared
        if not self.step_id:
            fields["step_id"] = step_id
        fields["input"] = json_copy(inp) if inp else {}
        if not (out is None or type(out) is str):
            fields["output"] = json_copy(out)
        fields["error"] = json_copy(err) if err else {}
        if not (item is None or type(item) is str):
            fields["item"] = json_copy(item)
        fields["children"] = ({cid: kid.clone(step_id=cid) for cid, kid in kids.items()}
                              if with_children and kids else {})
        copy = _new(StepRun)
        copy.__dict__ = fields
        return copy

    @classmethod
    def from_dict(cls, d: dict[str, Any], step_id: str = "") -> StepRun:
        if type(d) is dict:
            fast = cls._from_stored(d, step_id)
            if fast is not None:
                return fast
        where = f"step run {d.get('step_id') or step_id!r}" if isinstance(d, dict) else "step run"
        d = _dict(d, where)
        children = _dict(d.get("children"), (where, "children"))
        return cls(
            step_id=str(d.get("step_id") or step_id),
            status=_str_enum(StepStatus, d.get("status"), StepStatus.PENDING, (where, "status")),
            started_at=_ts(d.get("started_at"), (where, "started_at")),
            completed_at=_ts(d.get("completed_at"), (where, "completed_at")),
            next_attempt_at=_ts(d.get("next_attempt_at"), (where, "next_attempt_at")),
            attempts=int(_num(d.get("attempts"), (where, "attempts"))),
            input=json_copy(_dict(d.get("input"), (where, "input"))),
            output=json_copy(d.get("output")),
            error=json_copy(_dict(d.get("error"), (where, "error"))),
            job_id=str(d.get("job_id") or ""),
            item=json_copy(d.get("item")),
            children={str(k): StepRun.from_dict(v, str(k)) for k, v in children.items()},
        )


    @classmethod
    def _from_stored(cls, d: dict[str, Any], step_id: str) -> StepRun | None:
        """``from_dict`` for the documents ``to_dict`` writes (every field of its own type),
        which stores read back on every load; None sends anything else down the checking
        path, which gives the same result or the error."""
        sid = d.get("step_id") or step_id
        status = d.get("status")
        member = StepStatus._value2member_map_.get(status) if type(status) is str else None
        attempts = d.get("attempts", 0)
        input_ = d.get("input")
        error = d.get("error")
        job_id = d.get("job_id") or ""
        children = d.get("children")
        if (type(sid) is not str or member is None or type(attempts) is not int
                or (input_ is not None and type(input_) is not dict)
                or (error is not None and type(error) is not dict)
                or type(job_id) is not str
                or (children is not None and type(children) is not dict)):
            return None
        try:
            started = _ts(d.get("started_at"), "")
            completed = _ts(d.get("completed_at"), "")
            next_attempt = _ts(d.get("next_attempt_at"), "")
        except ValidationError:
            return None
        return _made(cls, {
            "step_id": sid,
            "status": member,
            "started_at": started,
            "completed_at": completed,
            "next_attempt_at": next_attempt,
            "attempts": attempts,
            "input": json_copy(input_) if input_ else {},
            "output": json_copy(d.get("output")),
            "error": json_copy(error) if error else {},
            "job_id": job_id,
            "item": json_copy(d.get("item")),
            "children": {str(k): StepRun.from_dict(v, str(k)) for k, v in children.items()}
            if children else {},
        })


@dataclass
class WorkflowRun:
    """One execution of a workflow."""

    id: str = ""
    workflow_id: str = ""
    org_id: str = ""
    team_id: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    status: RunStatus = RunStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepRun] = field(default_factory=dict)
    total_cost: float = 0
    triggered_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    rerun_of: str = ""
    rerun_step: str = ""
    dry_run: bool = False

    def output_of(self, step_id: str) -> Any:
        """The decoded output of a step (or of a for-each child ``"<step>[<i>]"``), as kept
        in ``context["steps"][step_id]["output"]``; ``None`` when the step has none (not
        finished, skipped, or an output over 256 KiB, of which only the pointer
        ``context["steps"][step_id]["result_ptr"]`` is kept). A for-each parent's output is
        the list of its children's outputs in index order; a condition step's is its
        boolean."""
        entry = self.context.get("steps", {}).get(step_id)
        return entry.get("output") if isinstance(entry, dict) else None

    def outputs_of(self, step_id: str) -> list[Any]:
        """The outputs of a for-each step's children in index order (``None`` for a child
        without one), whatever their number and state; ``[]`` for a step without children.
        Raises ``NotFoundError`` if the run has no such step."""
        sr = self.steps.get(step_id)
        if sr is None:
            raise NotFoundError(f"run {self.id!r} has no step {step_id!r}")
        ids = sorted(sr.children, key=_child_index)
        return [self.output_of(child_id) for child_id in ids]

    def header_dict(self, *, with_input: bool = True) -> dict[str, Any]:
        """Everything but ``steps`` and ``context`` (stored separately for O(1) updates).

        ``with_input=False`` leaves out ``input``, which never changes once a run is
        created and may be large: stores rewrite the header on every event."""
        # Written out rather than looped over _put: stores call this on every event.
        out: dict[str, Any] = {"id": self.id, "workflow_id": self.workflow_id}
        if self.org_id:
            out["org_id"] = self.org_id
        if self.team_id:
            out["team_id"] = self.team_id
        if with_input and self.input:
            out["input"] = json_copy(self.input)
        out["status"] = str(self.status.value)
        if self.started_at is not None:
            out["started_at"] = timestamp_text(self.started_at)
        if self.completed_at is not None:
            out["completed_at"] = timestamp_text(self.completed_at)
        if self.output:
            out["output"] = json_copy(self.output)
        if self.error:
            out["error"] = json_copy(self.error)
        _put(out, "total_cost", self.total_cost)
        if self.triggered_by:
            out["triggered_by"] = self.triggered_by
        if self.created_at is not None:
            out["created_at"] = timestamp_text(self.created_at)
        if self.updated_at is not None:
            out["updated_at"] = timestamp_text(self.updated_at)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.idempotency_key:
            out["idempotency_key"] = self.idempotency_key
        if self.rerun_of:
            out["rerun_of"] = self.rerun_of
        if self.rerun_step:
            out["rerun_step"] = self.rerun_step
        if self.dry_run:
            out["dry_run"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        out = self.header_dict()
        _put(out, "context", json_copy(self.context))
        out["steps"] = {sid: sr.to_dict() for sid, sr in self.steps.items()}
        return out

    def clone(self, *, with_steps: bool = True, with_context: bool = True,
              with_input: bool = True) -> WorkflowRun:
        """A deep copy equal to ``from_dict(to_dict())``, without formatting or parsing
        anything (in-memory stores keep runs as objects and copy them on every write and
        read). ``with_steps``/``with_context``/``with_input=False`` leave those parts empty:
        a store that keeps them apart copies them on its own."""
        output, error, labels, metadata = self.output, self.error, self.labels, self.metadata
        fields = self.__dict__.copy()  # strings, numbers, datetimes, the enum: shared
        fields["input"] = json_copy(self.input) if with_input and self.input else {}
        fields["context"] = json_copy(self.context) if with_context and self.context else {}
        fields["output"] = json_copy(output) if output else {}
        fields["error"] = json_copy(error) if error else {}
        fields["steps"] = ({sid: sr.clone(step_id=sid) for sid, sr in self.steps.items()}
                           if with_steps and self.steps else {})
        fields["total_cost"] = float(self.total_cost) if self.total_cost else 0.0
        fields["labels"] = {str(k): str(v) for k, v in labels.items()} if labels else {}
        fields["metadata"] = ({str(k): str(v) for k, v in metadata.items()}
                              if metadata else {})
        fields["dry_run"] = bool(self.dry_run)
        copy = _new(WorkflowRun)
        copy.__dict__ = fields
        return copy

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkflowRun:
        if type(d) is dict:
            fast = cls._from_stored(d)
            if fast is not None:
                return fast
        rid = str(d.get("id") or "") if isinstance(d, dict) else ""
        where = f"run {rid!r}"
        d = _dict(d, where)
        steps = _dict(d.get("steps"), (where, "steps"))
        return cls(
            id=rid,
            workflow_id=str(d.get("workflow_id") or ""),
            org_id=str(d.get("org_id") or ""),
            team_id=str(d.get("team_id") or ""),
            input=json_copy(_dict(d.get("input"), (where, "input"))),
            context=json_copy(_dict(d.get("context"), (where, "context"))),
            status=_str_enum(RunStatus, d.get("status"), RunStatus.PENDING, (where, "status")),
            started_at=_ts(d.get("started_at"), (where, "started_at")),
            completed_at=_ts(d.get("completed_at"), (where, "completed_at")),
            output=json_copy(_dict(d.get("output"), (where, "output"))),
            error=json_copy(_dict(d.get("error"), (where, "error"))),
            steps={str(k): StepRun.from_dict(v, str(k)) for k, v in steps.items()},
            total_cost=float(_num(d.get("total_cost"), (where, "total_cost"))),
            triggered_by=str(d.get("triggered_by") or ""),
            created_at=_ts(d.get("created_at"), (where, "created_at")),
            updated_at=_ts(d.get("updated_at"), (where, "updated_at")),
            labels={str(k): str(v) for k, v in _dict(d.get("labels"), (where, "labels")).items()},
            metadata={
                str(k): str(v) for k, v in _dict(d.get("metadata"), (where, "metadata")).items()
            },
            idempotency_key=str(d.get("idempotency_key") or ""),
            rerun_of=str(d.get("rerun_of") or ""),
            rerun_step=str(d.get("rerun_step") or ""),
            dry_run=bool(d.get("dry_run") or False),
        )


    @classmethod
    def _from_stored(cls, d: dict[str, Any]) -> WorkflowRun | None:
        """``from_dict`` for the documents stores write (every field of its own type), as
        ``StepRun._from_stored``; None sends anything else down the checking path."""
        texts = (d.get("id") or "", d.get("workflow_id") or "", d.get("org_id") or "",
                 d.get("team_id") or "", d.get("triggered_by") or "",
                 d.get("idempotency_key") or "", d.get("rerun_of") or "",
                 d.get("rerun_step") or "")
        status = d.get("status")
        member = RunStatus._value2member_map_.get(status) if type(status) is str else None
        cost = d.get("total_cost", 0)
        maps = (d.get("input"), d.get("context"), d.get("output"), d.get("error"),
                d.get("steps"), d.get("labels"), d.get("metadata"))
        if (member is None or (type(cost) is not int and type(cost) is not float)
                or not _STR_ONLY.issuperset(map(type, texts))
                or not _DICT_OR_NONE.issuperset(map(type, maps))):
            return None
        try:
            started, completed, created, updated = (
                _ts(d.get("started_at"), ""), _ts(d.get("completed_at"), ""),
                _ts(d.get("created_at"), ""), _ts(d.get("updated_at"), ""))
        except ValidationError:
            return None
        input_, context, output, error, steps, labels, metadata = maps
        rid, wf, org, team, triggered, idem, rerun_of, rerun_step = texts
        return _made(cls, {
            "id": rid, "workflow_id": wf, "org_id": org, "team_id": team,
            "input": json_copy(input_) if input_ else {},
            "context": json_copy(context) if context else {},
            "status": member, "started_at": started, "completed_at": completed,
            "output": json_copy(output) if output else {},
            "error": json_copy(error) if error else {},
            "steps": {str(k): StepRun.from_dict(v, str(k)) for k, v in steps.items()}
            if steps else {},
            "total_cost": float(cost), "triggered_by": triggered,
            "created_at": created, "updated_at": updated,
            "labels": {str(k): str(v) for k, v in labels.items()} if labels else {},
            "metadata": {str(k): str(v) for k, v in metadata.items()} if metadata else {},
            "idempotency_key": idem, "rerun_of": rerun_of, "rerun_step": rerun_step,
            "dry_run": bool(d.get("dry_run") or False),
        })


@dataclass
class TimelineEvent:
    """One append-only audit record of a run (SPEC §10)."""

    time: datetime | None = None
    type: str = ""
    run_id: str = ""
    workflow_id: str = ""
    step_id: str = ""
    job_id: str = ""
    status: str = ""
    result_ptr: str = ""
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": timestamp_text(self.time), "type": self.type}
        # written out: one to_dict per timeline event, several per step
        if self.run_id:
            out["run_id"] = self.run_id
        if self.workflow_id:
            out["workflow_id"] = self.workflow_id
        if self.step_id:
            out["step_id"] = self.step_id
        if self.job_id:
            out["job_id"] = self.job_id
        if self.status:
            out["status"] = self.status
        if self.result_ptr:
            out["result_ptr"] = self.result_ptr
        if self.message:
            out["message"] = self.message
        if self.data:
            out["data"] = json_copy(self.data)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimelineEvent:
        d = _dict(d, "timeline event")
        return cls(
            time=_ts(d.get("time"), ("timeline event", "time")),
            type=str(d.get("type") or ""),
            run_id=str(d.get("run_id") or ""),
            workflow_id=str(d.get("workflow_id") or ""),
            step_id=str(d.get("step_id") or ""),
            job_id=str(d.get("job_id") or ""),
            status=str(d.get("status") or ""),
            result_ptr=str(d.get("result_ptr") or ""),
            message=str(d.get("message") or ""),
            data=json_copy(_dict(d.get("data"), ("timeline event", "data"))),
        )


TERMINAL_RUN_STATUSES = _TERMINAL_RUN
TERMINAL_STEP_STATUSES = _TERMINAL_STEP

def _child_index(child_id: str) -> int:
    """The ``i`` of a for-each child id ``<step>[<i>]``."""
    digits = child_id.rpartition("[")[2].rstrip("]")
    return int(digits) if digits.isdigit() else -1


__all__ = [
    "TERMINAL_RUN_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "RunStatus",
    "StepRun",
    "StepStatus",
    "TimelineEvent",
    "WorkflowRun",
]
