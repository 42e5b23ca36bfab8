"""Workflow definition documents: ``Workflow``, its ``Step``s, their ``RetryConfig`` and
``StepMeta``, the ``StepType`` enum, and ``load_workflow`` for definition files.

Field names are exactly the snake_case keys of SPEC §1 so that cordum workflow files load
unchanged. ``to_dict`` omits empty values (like Go's ``omitempty``) to keep stored documents
small; ``from_dict`` accepts any subset of keys. The run-side documents live in
``run_doc``; ``cordtrio.model`` re-exports both.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .fields import (
    _dict,
    _list_of_str,
    _num,
    _put,
    _str_enum,
    _ts,
    json_copy,
    timestamp_text,
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


def _check_keys(d: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """Reject a key that is not a field of the document (a misspelling such as
    ``depend_on`` would otherwise be dropped without a word), suggesting the closest field."""
    for key in d:
        if key in allowed:
            continue
        name = str(key)
        close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValidationError(f"{where}: unknown key {name!r}{hint}")


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
    def from_dict(
        cls, d: dict[str, Any] | None, where: str = "retry", *, strict: bool = True
    ) -> RetryConfig:
        """Parse a ``retry`` object. ``strict`` rejects keys that are not fields."""
        d = _dict(d, where)
        if strict:
            _check_keys(d, _RETRY_KEYS, where)
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
    def from_dict(
        cls, d: dict[str, Any] | None, where: str = "meta", *, strict: bool = True
    ) -> StepMeta:
        """Parse a ``meta`` object. ``strict`` rejects keys that are not fields (``labels``
        itself is free-form)."""
        d = _dict(d, where)
        if strict:
            _check_keys(d, _META_KEYS, where)
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

    def __post_init__(self) -> None:
        # Step(type="approval") gets the enum member, as from_dict gives; an unknown string
        # is kept for validate_workflow (and save_workflow) to reject with the step's id.
        kind = self.type
        if type(kind) is not StepType and isinstance(kind, str):
            member = StepType._value2member_map_.get(kind.strip().lower())
            if member is not None:
                self.type = member  # type: ignore[assignment]

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
    def from_dict(cls, d: dict[str, Any], step_id: str = "", *, strict: bool = True) -> Step:
        """Parse a step document; ``step_id`` is its key in the workflow's ``steps``.

        ``strict`` (the default, for definitions written by people) rejects keys that are
        not fields of ``Step``, ``RetryConfig`` or ``StepMeta``, naming the step and the key
        and suggesting the closest field. Stores read their own documents with
        ``strict=False``: a key they do not know is ignored.
        """
        sid = str(d.get("id") or step_id) if isinstance(d, dict) else step_id
        where = f"step {sid!r}" if sid else "step"
        d = _dict(d, where)
        if strict:
            _check_keys(d, _STEP_KEYS, where)
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
            meta=(StepMeta.from_dict(meta, f"{where}.meta", strict=strict)
                  if meta is not None else None),
            on_error=str(d.get("on_error") or ""),
            retry=(RetryConfig.from_dict(retry, f"{where}.retry", strict=strict)
                   if retry is not None else None),
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

    def __post_init__(self) -> None:
        # Workflow(steps={"a": Step(topic="t")}): a step's id defaults to its key.
        for key, step in self.steps.items():
            if isinstance(step, Step) and not step.id:
                step.id = key

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("id", "org_id", "team_id", "name", "description", "version", "timeout_sec"):
            _put(out, key, getattr(self, key))
        out["steps"] = {sid: step.to_dict() for sid, step in self.steps.items()}
        _put(out, "config", json_copy(self.config))
        _put(out, "input_schema", json_copy(self.input_schema))
        _put(out, "parameters", json_copy(self.parameters))
        _put(out, "created_by", self.created_by)
        _put(out, "created_at", timestamp_text(self.created_at))
        _put(out, "updated_at", timestamp_text(self.updated_at))
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
    def from_dict(cls, d: dict[str, Any], *, strict: bool = True) -> Workflow:
        """Parse a workflow document (the cordum JSON shape; ``steps`` an object keyed by
        step id, or a list of steps with ids).

        ``strict`` (the default) rejects keys that are not fields of the workflow or of its
        steps (``step 'b': unknown key 'depend_on' (did you mean 'depends_on'?)``). Stores
        read stored documents with ``strict=False`` so that data written by another version
        of cordtrio stays readable.
        """
        d = _dict(d, "workflow")
        wid = str(d.get("id") or "")
        where = f"workflow {wid!r}" if wid else "workflow"
        if strict:
            _check_keys(d, _WORKFLOW_KEYS, where)
        raw_steps = d.get("steps") or {}
        steps: dict[str, Step] = {}
        if isinstance(raw_steps, list):  # tolerate a list of steps with ids
            for i, raw in enumerate(raw_steps):
                sid = str(raw.get("id") or "") if isinstance(raw, dict) else ""
                if not sid:
                    raise ValidationError(f"{where}: steps[{i}] has no id")
                if sid in steps:
                    raise ValidationError(f"{where}: steps[{i}] repeats step id {sid!r}")
                steps[sid] = Step.from_dict(raw, sid, strict=strict)
        elif isinstance(raw_steps, dict):
            for sid, raw in raw_steps.items():
                step = Step.from_dict(raw, str(sid), strict=strict)
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


_WORKFLOW_KEYS = frozenset(f.name for f in fields(Workflow))
_STEP_KEYS = frozenset(f.name for f in fields(Step))
_RETRY_KEYS = frozenset(f.name for f in fields(RetryConfig))
_META_KEYS = frozenset(f.name for f in fields(StepMeta))


def load_workflow(path: str | Path) -> Workflow:
    """Read a workflow definition from a ``.yaml``/``.yml``/``.json`` file.

    Raises ``ValidationError`` naming the file for unreadable or malformed content: a syntax
    error gives the line and column, followed by the offending line and a caret on lines of
    their own; a key that is not a field of the workflow, a step, its ``retry`` or its
    ``meta`` is rejected (``Workflow.from_dict`` with ``strict=True``). The definition is not
    validated as a graph here; ``validate_workflow`` (and every store's ``save_workflow``)
    does that.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"workflow file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"workflow file {str(p)!r}: not UTF-8 text: {exc}") from None
    try:
        data = _load_yaml(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except Exception as exc:
        raise ValidationError(_syntax_error(str(p), text, exc)) from None
    if not isinstance(data, dict):
        raise ValidationError(f"workflow file {str(p)!r}: top level must be a mapping")
    try:
        return Workflow.from_dict(data)
    except ValidationError as exc:
        raise ValidationError(f"workflow file {str(p)!r}: {exc}") from None


def _syntax_error(name: str, text: str, exc: Exception) -> str:
    """``workflow file 'x.yaml', line 5, column 12: <problem>`` and, on lines of their own,
    the offending line with a caret under the column (lines and columns count from 1)."""
    import yaml

    line = column = 0
    problem = str(exc)
    context = ""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        line, column = exc.problem_mark.line + 1, exc.problem_mark.column + 1
        problem = exc.problem or problem
        mark = exc.context_mark
        if exc.context and mark is not None and (mark.line, mark.column) != (line - 1,
                                                                            column - 1):
            context = f" ({exc.context} at line {mark.line + 1}, column {mark.column + 1})"
    elif isinstance(exc, json.JSONDecodeError):
        line, column, problem = exc.lineno, exc.colno, exc.msg
    if not line:
        return f"workflow file {name!r}: cannot parse: {problem}"
    head = f"workflow file {name!r}, line {line}, column {column}: {problem}{context}"
    lines = text.splitlines()
    if line > len(lines):
        return head
    source = lines[line - 1].expandtabs(1)
    return f"{head}\n    {source}\n    {' ' * (column - 1)}^"


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
