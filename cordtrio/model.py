"""The documents cordtrio stores and exchanges: workflows, runs, step runs, timeline events.

Field names are exactly the snake_case keys of SPEC §1 so that cordum workflow files load
unchanged. ``to_dict`` omits empty values (like Go's ``omitempty``) to keep stored documents
small; ``from_dict`` accepts any subset of keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .fields import (
    _dict,
    _format,
    _list_of_str,
    _num,
    _put,
    _str_enum,
    _ts,
    json_copy,
)


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

    def clone(self) -> RetryConfig:
        return RetryConfig(self.max_retries, self.initial_backoff_sec, self.max_backoff_sec,
                           self.multiplier)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "retry") -> RetryConfig:
        d = _dict(d, where)
        return cls(
            max_retries=int(_num(d.get("max_retries"), (where, "max_retries"))),
            initial_backoff_sec=_num(d.get("initial_backoff_sec"), (where, "initial_backoff_sec")),
            max_backoff_sec=_num(d.get("max_backoff_sec"), (where, "max_backoff_sec")),
            multiplier=_num(d.get("multiplier"), (where, "multiplier")),
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

    def clone(self) -> StepMeta:
        return StepMeta(self.actor_id, self.actor_type, self.idempotency_key, self.pack_id,
                        self.capability, list(self.risk_tags), list(self.requires),
                        dict(self.labels))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "meta") -> StepMeta:
        d = _dict(d, where)
        return cls(
            actor_id=str(d.get("actor_id") or ""),
            actor_type=str(d.get("actor_type") or ""),
            idempotency_key=str(d.get("idempotency_key") or ""),
            pack_id=str(d.get("pack_id") or ""),
            capability=str(d.get("capability") or ""),
            risk_tags=_list_of_str(d.get("risk_tags"), (where, "risk_tags")),
            requires=_list_of_str(d.get("requires"), (where, "requires")),
            labels={str(k): str(v) for k, v in _dict(d.get("labels"), (where, "labels")).items()},
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
        _put(out, "input", json_copy(self.input))
        _put(out, "input_schema", json_copy(self.input_schema))
        _put(out, "input_schema_id", self.input_schema_id)
        _put(out, "output_path", self.output_path)
        _put(out, "output_schema", json_copy(self.output_schema))
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

    def clone(self) -> Step:
        """A deep copy (what ``from_dict(to_dict())`` gives, without re-parsing)."""
        return Step(
            id=self.id, name=self.name, type=self.type, worker_id=self.worker_id,
            topic=self.topic, depends_on=list(self.depends_on), condition=self.condition,
            for_each=self.for_each, max_parallel=self.max_parallel,
            input=json_copy(self.input), input_schema=json_copy(self.input_schema),
            input_schema_id=self.input_schema_id, output_path=self.output_path,
            output_schema=json_copy(self.output_schema),
            output_schema_id=self.output_schema_id,
            meta=self.meta.clone() if self.meta is not None else None,
            on_error=self.on_error,
            retry=self.retry.clone() if self.retry is not None else None,
            timeout_sec=self.timeout_sec, delay_sec=self.delay_sec,
            delay_until=self.delay_until, route_labels=dict(self.route_labels),
        )

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
            type=_str_enum(StepType, d.get("type"), StepType.WORKER, (where, "type")),
            worker_id=str(d.get("worker_id") or ""),
            topic=str(d.get("topic") or ""),
            depends_on=_list_of_str(d.get("depends_on"), (where, "depends_on")),
            condition=str(d.get("condition") or ""),
            for_each=str(d.get("for_each") or ""),
            max_parallel=int(_num(d.get("max_parallel"), (where, "max_parallel"))),
            input=json_copy(_dict(d.get("input"), (where, "input"))),
            input_schema=json_copy(_dict(d.get("input_schema"), (where, "input_schema"))),
            input_schema_id=str(d.get("input_schema_id") or ""),
            output_path=str(d.get("output_path") or ""),
            output_schema=json_copy(_dict(d.get("output_schema"), (where, "output_schema"))),
            output_schema_id=str(d.get("output_schema_id") or ""),
            meta=StepMeta.from_dict(meta, f"{where}.meta") if meta is not None else None,
            on_error=str(d.get("on_error") or ""),
            retry=RetryConfig.from_dict(retry, f"{where}.retry") if retry is not None else None,
            timeout_sec=_num(d.get("timeout_sec"), (where, "timeout_sec")),
            delay_sec=_num(d.get("delay_sec"), (where, "delay_sec")),
            delay_until=str(d.get("delay_until") or ""),
            route_labels={
                str(k): str(v)
                for k, v in _dict(d.get("route_labels"), (where, "route_labels")).items()
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
        _put(out, "config", json_copy(self.config))
        _put(out, "input_schema", json_copy(self.input_schema))
        _put(out, "parameters", json_copy(self.parameters))
        _put(out, "created_by", self.created_by)
        _put(out, "created_at", _format(self.created_at))
        _put(out, "updated_at", _format(self.updated_at))
        return out

    def clone(self) -> Workflow:
        """A deep copy (what ``from_dict(to_dict())`` gives, without re-parsing): stores
        that keep parsed workflows hand out clones."""
        return Workflow(
            id=self.id, org_id=self.org_id, team_id=self.team_id, name=self.name,
            description=self.description, version=self.version,
            timeout_sec=self.timeout_sec,
            steps={sid: step.clone() for sid, step in self.steps.items()},
            config=json_copy(self.config), input_schema=json_copy(self.input_schema),
            parameters=json_copy(self.parameters), created_by=self.created_by,
            created_at=self.created_at, updated_at=self.updated_at,
        )

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
            timeout_sec=_num(d.get("timeout_sec"), (where, "timeout_sec")),
            steps=steps,
            config=json_copy(_dict(d.get("config"), (where, "config"))),
            input_schema=json_copy(_dict(d.get("input_schema"), (where, "input_schema"))),
            parameters=json_copy(params if isinstance(params, list) else [params]),
            created_by=str(d.get("created_by") or ""),
            created_at=_ts(d.get("created_at"), (where, "created_at")),
            updated_at=_ts(d.get("updated_at"), (where, "updated_at")),
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
            out["started_at"] = _format(self.started_at)
        if self.completed_at is not None:
            out["completed_at"] = _format(self.completed_at)
        if self.next_attempt_at is not None:
            out["next_attempt_at"] = _format(self.next_attempt_at)
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
        return cls(
            step_id=sid,
            status=member,  # type: ignore[arg-type]
            started_at=started,
            completed_at=completed,
            next_attempt_at=next_attempt,
            attempts=attempts,
            input=json_copy(input_) if input_ else {},
            output=json_copy(d.get("output")),
            error=json_copy(error) if error else {},
            job_id=job_id,
            item=json_copy(d.get("item")),
            children={str(k): StepRun.from_dict(v, str(k)) for k, v in children.items()}
            if children else {},
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
            out["started_at"] = _format(self.started_at)
        if self.completed_at is not None:
            out["completed_at"] = _format(self.completed_at)
        if self.output:
            out["output"] = json_copy(self.output)
        if self.error:
            out["error"] = json_copy(self.error)
        _put(out, "total_cost", self.total_cost)
        if self.triggered_by:
            out["triggered_by"] = self.triggered_by
        if self.created_at is not None:
            out["created_at"] = _format(self.created_at)
        if self.updated_at is not None:
            out["updated_at"] = _format(self.updated_at)
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkflowRun:
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


TimelineRow = tuple[Any, ...]
TIMELINE_ROW_FIELDS = ("time", "type", "run_id", "workflow_id", "step_id", "job_id", "status",
                       "result_ptr", "message", "data")


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
        out: dict[str, Any] = {"time": _format(self.time), "type": self.type}
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

    def to_row(self) -> TimelineRow:
        """The event as a tuple of ``to_dict`` values (``TIMELINE_ROW_FIELDS`` order; empty
        ones as ``""``/None, trailing empty ones left out; at least time, type and run id):
        what in-memory stores keep, at half the size of a dict."""
        row = (_format(self.time), self.type, self.run_id, self.workflow_id, self.step_id,
               self.job_id, self.status, self.result_ptr, self.message,
               json_copy(self.data) if self.data else None)
        end = len(row)
        while end > 3 and not row[end - 1]:
            end -= 1  # trailing empty fields are left out (shorter tuple)
        return row[:end]

    @staticmethod
    def row_to_dict(row: TimelineRow) -> dict[str, Any]:
        """``to_dict`` of the event a row came from."""
        out: dict[str, Any] = {"time": row[0], "type": row[1]}
        for key, value in zip(TIMELINE_ROW_FIELDS[2:], row[2:], strict=False):
            if value:
                out[key] = value
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

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "TIMELINE_ROW_FIELDS",
    "RetryConfig",
    "RunStatus",
    "Step",
    "StepMeta",
    "StepRun",
    "StepStatus",
    "StepType",
    "TimelineEvent",
    "TimelineRow",
    "Workflow",
    "WorkflowRun",
    "load_workflow",
]
