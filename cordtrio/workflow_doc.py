"""Workflow definition documents: ``Workflow``, its ``Step``s, their ``RetryConfig`` and
``StepMeta``, the ``StepType`` enum, and ``load_workflow`` for definition files.

Field names are exactly the snake_case keys of SPEC §1 so that cordum workflow files load
unchanged. ``to_dict`` omits empty values (like Go's ``omitempty``) to keep stored documents
small; ``from_dict`` accepts any subset of keys. The run-side documents live in
``run_doc``; ``cordtrio.model`` re-exports both.
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

_new = object.__new__  # clone() copies __dict__ directly: no __init__ call for 23 fields


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
        """A deep copy (what ``from_dict(to_dict())`` gives, without re-parsing): the
        instance dict copied at C speed and each mutable field replaced by a copy, as stores
        hand out a copy of every step on each ``get_workflow``."""
        inp, in_schema, out_schema = self.input, self.input_schema, self.output_schema
        meta, retry, route = self.meta, self.retry, self.route_labels
        fields = self.__dict__.copy()  # strings, numbers, the enum: immutable, shared
        fields["depends_on"] = list(self.depends_on)
        fields["input"] = json_copy(inp) if inp else {}
        fields["input_schema"] = json_copy(in_schema) if in_schema else {}
        fields["output_schema"] = json_copy(out_schema) if out_schema else {}
        fields["meta"] = meta.clone() if meta is not None else None
        fields["retry"] = retry.clone() if retry is not None else None
        fields["route_labels"] = dict(route) if route else {}
        copy = _new(Step)
        copy.__dict__ = fields
        return copy

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
        config, in_schema, params = self.config, self.input_schema, self.parameters
        fields = self.__dict__.copy()  # strings, numbers, datetimes: immutable, shared
        fields["steps"] = {sid: step.clone() for sid, step in self.steps.items()}
        fields["config"] = json_copy(config) if config else {}
        fields["input_schema"] = json_copy(in_schema) if in_schema else {}
        fields["parameters"] = json_copy(params) if params else []
        copy = _new(Workflow)
        copy.__dict__ = fields
        return copy

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


__all__ = [
    "RetryConfig",
    "Step",
    "StepMeta",
    "StepType",
    "Workflow",
    "load_workflow",
]
