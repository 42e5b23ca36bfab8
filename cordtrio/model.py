"""The documents cordtrio stores and exchanges: workflows, runs, step runs, timeline events.

Field names are exactly the snake_case keys of SPEC §1 so that cordum workflow files load
unchanged. ``to_dict`` omits empty values (like Go's ``omitempty``) to keep stored documents
small; ``from_dict`` accepts any subset of keys.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .timeutil import format_ts, parse_ts


class StepType(StrEnum):
    """Kinds of step. Every kind not handled by the engine itself is dispatched as a job."""

    WORKER = "worker"
    CONDITION = "condition"
    APPROVAL = "approval"
    DELAY = "delay"
    NOTIFY = "notify"
    LLM = "llm"
    HTTP = "http"
    CONTAINER = "container"
    SCRIPT = "script"
    INPUT = "input"
    SWITCH = "switch"
    PARALLEL = "parallel"
    LOOP = "loop"
    TRANSFORM = "transform"
    STORAGE = "storage"
    SUBWORKFLOW = "subworkflow"

    @property
    def is_worker_like(self) -> bool:
        """True for every type that becomes a job on the bus."""
        return self not in _ENGINE_TYPES


_ENGINE_TYPES = frozenset(
    {StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY}
)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RUN


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STEP


_TERMINAL_RUN = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)
_TERMINAL_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT}
)


def _str_enum(enum: type[StrEnum], value: Any, default: Any, where: str) -> Any:
    if value is None or value == "":
        return default
    try:
        return enum(str(value).strip().lower())
    except ValueError:
        raise ValidationError(f"{where}: unknown {enum.__name__} {value!r}") from None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is empty (Go's omitempty)."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return
    if isinstance(value, (dict, list)) and not value:
        return
    out[key] = value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list_of_str(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValidationError(f"{where}: expected a list, got {type(value).__name__}")
    return [str(v) for v in value]


def _num(value: Any, where: str) -> float | int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value) if "." in str(value) else int(str(value))
        except (TypeError, ValueError):
            raise ValidationError(f"{where}: expected a number, got {value!r}") from None
    return value


def _ts(value: Any, where: str) -> datetime | None:
    try:
        return parse_ts(value, field=where)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


# --------------------------------------------------------------------------- definitions


@dataclass
class RetryConfig:
    """How often and how patiently a failed job is retried (SPEC §6)."""

    max_retries: int = 0
    initial_backoff_sec: float = 0
    max_backoff_sec: float = 0
    multiplier: float = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "max_retries", self.max_retries)
        _put(out, "initial_backoff_sec", self.initial_backoff_sec)
        _put(out, "max_backoff_sec", self.max_backoff_sec)
        _put(out, "multiplier", self.multiplier)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "retry") -> RetryConfig:
        d = _dict(d, where)
        return cls(
            max_retries=int(_num(d.get("max_retries"), f"{where}.max_retries")),
            initial_backoff_sec=_num(d.get("initial_backoff_sec"), f"{where}.initial_backoff_sec"),
            max_backoff_sec=_num(d.get("max_backoff_sec"), f"{where}.max_backoff_sec"),
            multiplier=_num(d.get("multiplier"), f"{where}.multiplier"),
        )


@dataclass
class StepMeta:
    """Governance metadata copied onto the job request (SPEC §5)."""

    actor_id: str = ""
    actor_type: str = ""
    idempotency_key: str = ""
    pack_id: str = ""
    capability: str = ""
    risk_tags: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("actor_id", "actor_type", "idempotency_key", "pack_id", "capability"):
            _put(out, key, getattr(self, key))
        _put(out, "risk_tags", list(self.risk_tags))
        _put(out, "requires", list(self.requires))
        _put(out, "labels", dict(self.labels))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "meta") -> StepMeta:
        d = _dict(d, where)
        return cls(
            actor_id=str(d.get("actor_id") or ""),
            actor_type=str(d.get("actor_type") or ""),
            idempotency_key=str(d.get("idempotency_key") or ""),
            pack_id=str(d.get("pack_id") or ""),
            capability=str(d.get("capability") or ""),
            risk_tags=_list_of_str(d.get("risk_tags"), f"{where}.risk_tags"),
            requires=_list_of_str(d.get("requires"), f"{where}.requires"),
            labels={str(k): str(v) for k, v in _dict(d.get("labels"), f"{where}.labels").items()},
        )


@dataclass
class Step:
    """One node of a workflow DAG (SPEC §1)."""

    id: str = ""
    name: str = ""
    type: StepType = StepType.WORKER
    worker_id: str = ""
    topic: str = ""
    depends_on: list[str] = field(default_factory=list)
    condition: str = ""
    for_each: str = ""
    max_parallel: int = 0
    input: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] = field(default_factory=dict)
    input_schema_id: str = ""
    output_path: str = ""
    output_schema: dict[str, Any] = field(default_factory=dict)
    output_schema_id: str = ""
    meta: StepMeta | None = None
    on_error: str = ""
    retry: RetryConfig | None = None
    timeout_sec: float = 0
    delay_sec: float = 0
    delay_until: str = ""
    route_labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "id", self.id)
        _put(out, "name", self.name)
        out["type"] = str(self.type.value if isinstance(self.type, StepType) else self.type)
        for key in ("worker_id", "topic"):
            _put(out, key, getattr(self, key))
        _put(out, "depends_on", list(self.depends_on))
        for key in ("condition", "for_each", "max_parallel"):
            _put(out, key, getattr(self, key))
        _put(out, "input", copy.deepcopy(self.input))
        _put(out, "input_schema", copy.deepcopy(self.input_schema))
        _put(out, "input_schema_id", self.input_schema_id)
        _put(out, "output_path", self.output_path)
        _put(out, "output_schema", copy.deepcopy(self.output_schema))
        _put(out, "output_schema_id", self.output_schema_id)
        if self.meta is not None:  # kept even when empty so that from_dict(to_dict()) == self
            out["meta"] = self.meta.to_dict()
        _put(out, "on_error", self.on_error)
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        for key in ("timeout_sec", "delay_sec", "delay_until"):
            _put(out, key, getattr(self, key))
        _put(out, "route_labels", dict(self.route_labels))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], step_id: str = "") -> Step:
        sid = str(d.get("id") or step_id) if isinstance(d, dict) else step_id
        where = f"step {sid!r}" if sid else "step"
        d = _dict(d, where)
        meta = d.get("meta")
        retry = d.get("retry")
        return cls(
            id=sid,
            name=str(d.get("name") or ""),
            type=_str_enum(StepType, d.get("type"), StepType.WORKER, f"{where}.type"),
            worker_id=str(d.get("worker_id") or ""),
            topic=str(d.get("topic") or ""),
            depends_on=_list_of_str(d.get("depends_on"), f"{where}.depends_on"),
            condition=str(d.get("condition") or ""),
            for_each=str(d.get("for_each") or ""),
            max_parallel=int(_num(d.get("max_parallel"), f"{where}.max_parallel")),
            input=copy.deepcopy(_dict(d.get("input"), f"{where}.input")),
            input_schema=copy.deepcopy(_dict(d.get("input_schema"), f"{where}.input_schema")),
            input_schema_id=str(d.get("input_schema_id") or ""),
            output_path=str(d.get("output_path") or ""),
            output_schema=copy.deepcopy(_dict(d.get("output_schema"), f"{where}.output_schema")),
            output_schema_id=str(d.get("output_schema_id") or ""),
            meta=StepMeta.from_dict(meta, f"{where}.meta") if meta is not None else None,
            on_error=str(d.get("on_error") or ""),
            retry=RetryConfig.from_dict(retry, f"{where}.retry") if retry is not None else None,
            timeout_sec=_num(d.get("timeout_sec"), f"{where}.timeout_sec"),
            delay_sec=_num(d.get("delay_sec"), f"{where}.delay_sec"),
            delay_until=str(d.get("delay_until") or ""),
            route_labels={
                str(k): str(v)
                for k, v in _dict(d.get("route_labels"), f"{where}.route_labels").items()
            },
        )


@dataclass
class Workflow:
    """A named DAG of steps. ``steps`` keeps definition order, which the ready pass walks."""

    id: str = ""
    org_id: str = ""
    team_id: str = ""
    name: str = ""
    description: str = ""
    version: str = ""
    timeout_sec: float = 0
    steps: dict[str, Step] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] = field(default_factory=dict)
    parameters: list[Any] = field(default_factory=list)
    created_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("id", "org_id", "team_id", "name", "description", "version", "timeout_sec"):
            _put(out, key, getattr(self, key))
        out["steps"] = {sid: step.to_dict() for sid, step in self.steps.items()}
        _put(out, "config", copy.deepcopy(self.config))
        _put(out, "input_schema", copy.deepcopy(self.input_schema))
        _put(out, "parameters", copy.deepcopy(self.parameters))
        _put(out, "created_by", self.created_by)
        _put(out, "created_at", format_ts(self.created_at))
        _put(out, "updated_at", format_ts(self.updated_at))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workflow:
        d = _dict(d, "workflow")
        wid = str(d.get("id") or "")
        where = f"workflow {wid!r}" if wid else "workflow"
        raw_steps = d.get("steps") or {}
        steps: dict[str, Step] = {}
        if isinstance(raw_steps, list):  # tolerate a list of steps with ids
            for i, raw in enumerate(raw_steps):
                sid = str(raw.get("id") or "") if isinstance(raw, dict) else ""
                if not sid:
                    raise ValidationError(f"{where}: steps[{i}] has no id")
                if sid in steps:
                    raise ValidationError(f"{where}: steps[{i}] repeats step id {sid!r}")
                steps[sid] = Step.from_dict(raw, sid)
        elif isinstance(raw_steps, dict):
            for sid, raw in raw_steps.items():
                step = Step.from_dict(raw, str(sid))
                if step.id != str(sid):
                    raise ValidationError(
                        f"{where}: step key {sid!r} does not match its id {step.id!r}"
                    )
                steps[str(sid)] = step
        else:
            raise ValidationError(f"{where}.steps: expected an object or a list")
        params = d.get("parameters") or []
        return cls(
            id=wid,
            org_id=str(d.get("org_id") or ""),
            team_id=str(d.get("team_id") or ""),
            name=str(d.get("name") or ""),
            description=str(d.get("description") or ""),
            version=str(d.get("version") or ""),
            timeout_sec=_num(d.get("timeout_sec"), f"{where}.timeout_sec"),
            steps=steps,
            config=copy.deepcopy(_dict(d.get("config"), f"{where}.config")),
            input_schema=copy.deepcopy(_dict(d.get("input_schema"), f"{where}.input_schema")),
            parameters=copy.deepcopy(params if isinstance(params, list) else [params]),
            created_by=str(d.get("created_by") or ""),
            created_at=_ts(d.get("created_at"), f"{where}.created_at"),
            updated_at=_ts(d.get("updated_at"), f"{where}.updated_at"),
        )


def load_workflow(path: str | Path) -> Workflow:
    """Read a workflow definition from a ``.yaml``/``.yml``/``.json`` file.

    Raises ``ValidationError`` naming the file for unreadable or malformed content. The
    definition is not validated as a graph here; ``validate_workflow`` (and every store's
    ``save_workflow``) does that.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"workflow file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = _load_yaml(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except Exception as exc:
        raise ValidationError(f"workflow file {str(p)!r}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"workflow file {str(p)!r}: top level must be a mapping")
    try:
        return Workflow.from_dict(data)
    except ValidationError as exc:
        raise ValidationError(f"workflow file {str(p)!r}: {exc}") from None


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` except that timestamps stay strings, as they would in JSON.

    Plain ``safe_load`` turns an unquoted ``delay_until: 2030-01-01T00:00:00Z`` (or any date
    inside ``input``) into a ``datetime``, which is neither an RFC 3339 string nor
    JSON-serialisable when the input becomes a job payload.
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


# --------------------------------------------------------------------------------- runs


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
            out["started_at"] = format_ts(self.started_at)
        if self.completed_at is not None:
            out["completed_at"] = format_ts(self.completed_at)
        if self.next_attempt_at is not None:
            out["next_attempt_at"] = format_ts(self.next_attempt_at)
        if self.attempts:
            out["attempts"] = self.attempts
        if self.input:
            out["input"] = copy.deepcopy(self.input)
        if self.output is not None:
            out["output"] = copy.deepcopy(self.output)
        if self.error:
            out["error"] = copy.deepcopy(self.error)
        if self.job_id:
            out["job_id"] = self.job_id
        if self.item is not None:
            out["item"] = copy.deepcopy(self.item)
        if with_children and self.children:
            out["children"] = {cid: c.to_dict() for cid, c in self.children.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], step_id: str = "") -> StepRun:
        where = f"step run {d.get('step_id') or step_id!r}" if isinstance(d, dict) else "step run"
        d = _dict(d, where)
        children = _dict(d.get("children"), f"{where}.children")
        return cls(
            step_id=str(d.get("step_id") or step_id),
            status=_str_enum(StepStatus, d.get("status"), StepStatus.PENDING, f"{where}.status"),
            started_at=_ts(d.get("started_at"), f"{where}.started_at"),
            completed_at=_ts(d.get("completed_at"), f"{where}.completed_at"),
            next_attempt_at=_ts(d.get("next_attempt_at"), f"{where}.next_attempt_at"),
            attempts=int(_num(d.get("attempts"), f"{where}.attempts")),
            input=copy.deepcopy(_dict(d.get("input"), f"{where}.input")),
            output=copy.deepcopy(d.get("output")),
            error=copy.deepcopy(_dict(d.get("error"), f"{where}.error")),
            job_id=str(d.get("job_id") or ""),
            item=copy.deepcopy(d.get("item")),
            children={str(k): StepRun.from_dict(v, str(k)) for k, v in children.items()},
        )


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

    def header_dict(self, *, with_input: bool = True) -> dict[str, Any]:
        """Everything but ``steps`` and ``context`` (stored separately for O(1) updates).

        ``with_input=False`` leaves out ``input``, which never changes once a run is
        created and may be large: stores rewrite the header on every event."""
        out: dict[str, Any] = {"id": self.id, "workflow_id": self.workflow_id}
        _put(out, "org_id", self.org_id)
        _put(out, "team_id", self.team_id)
        if with_input:
            _put(out, "input", copy.deepcopy(self.input))
        out["status"] = str(self.status.value)
        _put(out, "started_at", format_ts(self.started_at))
        _put(out, "completed_at", format_ts(self.completed_at))
        _put(out, "output", copy.deepcopy(self.output))
        _put(out, "error", copy.deepcopy(self.error))
        _put(out, "total_cost", self.total_cost)
        _put(out, "triggered_by", self.triggered_by)
        _put(out, "created_at", format_ts(self.created_at))
        _put(out, "updated_at", format_ts(self.updated_at))
        _put(out, "labels", dict(self.labels))
        _put(out, "metadata", dict(self.metadata))
        _put(out, "idempotency_key", self.idempotency_key)
        _put(out, "rerun_of", self.rerun_of)
        _put(out, "rerun_step", self.rerun_step)
        if self.dry_run:
            out["dry_run"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        out = self.header_dict()
        _put(out, "context", copy.deepcopy(self.context))
        out["steps"] = {sid: sr.to_dict() for sid, sr in self.steps.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkflowRun:
        rid = str(d.get("id") or "") if isinstance(d, dict) else ""
        where = f"run {rid!r}"
        d = _dict(d, where)
        steps = _dict(d.get("steps"), f"{where}.steps")
        return cls(
            id=rid,
            workflow_id=str(d.get("workflow_id") or ""),
            org_id=str(d.get("org_id") or ""),
            team_id=str(d.get("team_id") or ""),
            input=copy.deepcopy(_dict(d.get("input"), f"{where}.input")),
            context=copy.deepcopy(_dict(d.get("context"), f"{where}.context")),
            status=_str_enum(RunStatus, d.get("status"), RunStatus.PENDING, f"{where}.status"),
            started_at=_ts(d.get("started_at"), f"{where}.started_at"),
            completed_at=_ts(d.get("completed_at"), f"{where}.completed_at"),
            output=copy.deepcopy(_dict(d.get("output"), f"{where}.output")),
            error=copy.deepcopy(_dict(d.get("error"), f"{where}.error")),
            steps={str(k): StepRun.from_dict(v, str(k)) for k, v in steps.items()},
            total_cost=float(_num(d.get("total_cost"), f"{where}.total_cost")),
            triggered_by=str(d.get("triggered_by") or ""),
            created_at=_ts(d.get("created_at"), f"{where}.created_at"),
            updated_at=_ts(d.get("updated_at"), f"{where}.updated_at"),
            labels={str(k): str(v) for k, v in _dict(d.get("labels"), f"{where}.labels").items()},
            metadata={
                str(k): str(v) for k, v in _dict(d.get("metadata"), f"{where}.metadata").items()
            },
            idempotency_key=str(d.get("idempotency_key") or ""),
            rerun_of=str(d.get("rerun_of") or ""),
            rerun_step=str(d.get("rerun_step") or ""),
            dry_run=bool(d.get("dry_run") or False),
        )


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
        out: dict[str, Any] = {"time": format_ts(self.time), "type": self.type}
        for key in ("run_id", "workflow_id", "step_id", "job_id", "status", "result_ptr",
                    "message"):
            _put(out, key, getattr(self, key))
        if self.data:
            out["data"] = copy.deepcopy(self.data)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimelineEvent:
        d = _dict(d, "timeline event")
        return cls(
            time=_ts(d.get("time"), "timeline event.time"),
            type=str(d.get("type") or ""),
            run_id=str(d.get("run_id") or ""),
            workflow_id=str(d.get("workflow_id") or ""),
            step_id=str(d.get("step_id") or ""),
            job_id=str(d.get("job_id") or ""),
            status=str(d.get("status") or ""),
            result_ptr=str(d.get("result_ptr") or ""),
            message=str(d.get("message") or ""),
            data=copy.deepcopy(_dict(d.get("data"), "timeline event.data")),
        )


TERMINAL_RUN_STATUSES = _TERMINAL_RUN
TERMINAL_STEP_STATUSES = _TERMINAL_STEP

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "RetryConfig",
    "RunStatus",
    "Step",
    "StepMeta",
    "StepRun",
    "StepStatus",
    "StepType",
    "TimelineEvent",
    "Workflow",
    "WorkflowRun",
    "load_workflow",
]
