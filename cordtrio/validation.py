"""Checks a workflow definition before it is saved (SPEC §1, "Validation when a workflow is
saved"), plus the graph helpers the engine needs (topological order, transitive dependencies).

The original engine accepted any definition and then ran bad graphs forever (a dependency on
a missing step, a cycle, an expression that never parses). Everything that can be known
without running the workflow is rejected here instead, with a message that names the workflow,
the step and the problem, e.g. ``workflow 'etl': step 'load' depends on unknown step 'fetch'``.

Validation stops at the first problem. Problems are looked for in a fixed order so that the
message for a given definition is stable: workflow-level fields first, then every step in
definition order (each step's own fields, in the order of SPEC §1), then the graph as a whole
(cycles).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from .errors import ExpressionError, NotFoundError, ValidationError
from .expr import check_template, compile_expr
from .model import Step, StepType, Workflow
from .timeutil import parse_ts

__all__ = ["collect_dependencies", "topological_order", "validate_workflow"]

# DFS colours for cycle detection.
_WHITE, _GREY, _BLACK = 0, 1, 2


def validate_workflow(wf: Workflow) -> None:
    """Raise ``ValidationError`` for the first problem in ``wf``; return ``None`` if it is sound.

    Rejected: an empty workflow id; a negative workflow ``timeout_sec``; an invalid workflow
    ``input_schema``; a step whose key differs from its ``id`` (or is empty); an unknown step
    type; a ``depends_on`` naming no step or the step itself; a dependency cycle (named in
    order, ``cycle a -> b -> a``); a worker-like step with neither ``topic`` nor ``worker_id``;
    a ``condition``, ``for_each`` or ``${...}`` inside ``input`` that does not parse;
    negative ``delay_sec``, ``max_parallel``, ``timeout_sec`` or retry numbers (and any
    non-finite number); a ``delay_until`` that is not RFC 3339; an ``on_error`` naming no step
    or the step itself; an ``output_path`` with an empty segment; an invalid inline
    ``input_schema``/``output_schema``.

    Deliberately accepted:

    * A workflow with no steps. It has nothing to wait for, so a run of it succeeds at once
      (SPEC §7: "all succeeded" holds vacuously).
    * A ``condition`` step with an empty ``condition``. SPEC §3 defines that as a run-time
      failure ("condition expression required", timeline ``step_condition_failed``), so it
      stays one rather than becoming a save-time error.
    * ``input_schema_id``/``output_schema_id``: the schema registry is not known here; a
      missing schema is reported when the step runs.
    """
    wf_name = f"workflow {wf.id!r}"
    if not isinstance(wf.id, str) or not wf.id.strip():
        raise ValidationError("workflow: id is required (got an empty id)")
    _check_number(wf.timeout_sec, f"{wf_name}: timeout_sec")
    _check_schema(wf.input_schema, f"{wf_name}: input_schema")

    for key, step in wf.steps.items():
        _check_step(wf, key, step)

    cycle = _find_cycle(wf)
    if cycle:
        raise ValidationError(
            f"{wf_name}: step {cycle[0]!r} is part of a dependency cycle "
            f"{' -> '.join(cycle)}"
        )


def topological_order(wf: Workflow) -> list[str]:
    """Step ids ordered so that every step comes after all of its dependencies.

    Built by repeated sweeps over the steps in definition order, each taking every step whose
    dependencies are already placed, so the result is deterministic and equals the definition
    order whenever that order is already topological. Raises ``ValidationError``
    for an unknown dependency or a cycle (the same messages as ``validate_workflow``).
    """
    index = {sid: i for i, sid in enumerate(wf.steps)}
    for sid, step in wf.steps.items():
        for dep in step.depends_on:
            if dep not in index:
                raise ValidationError(
                    f"workflow {wf.id!r}: step {sid!r} depends on unknown step {dep!r}"
                )
    cycle = _find_cycle(wf)
    if cycle:
        raise ValidationError(
            f"workflow {wf.id!r}: step {cycle[0]!r} is part of a dependency cycle "
            f"{' -> '.join(cycle)}"
        )
    remaining = {sid: set(step.depends_on) for sid, step in wf.steps.items()}
    order: list[str] = []
    done: set[str] = set()
    # Repeated definition-order sweeps: O(n²) worst case, trivial for workflow sizes, and the
    # tie-break rule is obvious from the code.
    while len(order) < len(remaining):
        for sid, deps in remaining.items():
            if sid not in done and deps <= done:
                order.append(sid)
                done.add(sid)
    return order


def collect_dependencies(wf: Workflow, step_id: str) -> set[str]:
    """All transitive ``depends_on`` of ``step_id`` (the step itself excluded).

    Used by ``rerun_from``: every one of these must have succeeded in the old run and is
    copied into the new one. Raises ``NotFoundError`` if ``step_id`` is not a step of ``wf``.
    Unknown dependency names are skipped and cycles terminate (``validate_workflow`` rejects
    both before a workflow is stored).
    """
    if step_id not in wf.steps:
        raise NotFoundError(f"workflow {wf.id!r}: step {step_id!r} not found")
    seen: set[str] = set()
    stack = list(wf.steps[step_id].depends_on)
    while stack:
        dep = stack.pop()
        if dep in seen or dep not in wf.steps:
            continue
        seen.add(dep)
        stack.extend(wf.steps[dep].depends_on)
    seen.discard(step_id)
    return seen


# ------------------------------------------------------------------------------ step checks


def _check_step(wf: Workflow, key: str, step: Step) -> None:
    """Every per-step rule, in the field order of SPEC §1."""
    wf_name = f"workflow {wf.id!r}"
    if not isinstance(key, str) or not key.strip():
        raise ValidationError(f"{wf_name}: a step has an empty id")
    where = f"{wf_name}: step {key!r}"
    if step.id != key:
        raise ValidationError(f"{where}: key does not match the step's id {step.id!r}")

    try:
        stype = StepType(str(step.type).strip().lower())
    except ValueError:
        valid = ", ".join(member.value for member in StepType)
        raise ValidationError(
            f"{where}: unknown step type {step.type!r} (expected one of: {valid})"
        ) from None
    if stype.is_worker_like and not step.topic and not step.worker_id:
        raise ValidationError(
            f"{where} needs a topic or a worker_id (type {stype.value!r} is dispatched as a job)"
        )

    for dep in step.depends_on:
        if dep == key:
            raise ValidationError(f"{where} depends on itself")
        if dep not in wf.steps:
            raise ValidationError(f"{where} depends on unknown step {dep!r}")
        if any(other.on_error == dep for other in wf.steps.values()):
            # A handler runs only after a failure: its dependents could never start in a
            # run where nothing fails, and that run would never end.
            raise ValidationError(
                f"{where} depends on on_error handler {dep!r}, which runs only after a failure"
            )

    _check_expr(step.condition, f"{where}: condition")
    _check_expr(step.for_each, f"{where}: for_each")
    _check_number(step.max_parallel, f"{where}: max_parallel")
    for path, text in _template_strings(step.input, "input"):
        try:
            check_template(text)
        except ExpressionError as exc:
            raise ValidationError(f"{where}: {path}: invalid template {text!r}: {exc}") from None

    _check_schema(step.input_schema, f"{where}: input_schema")
    _check_output_path(step.output_path, f"{where}: output_path")
    _check_schema(step.output_schema, f"{where}: output_schema")

    if step.on_error:
        if step.on_error == key:
            raise ValidationError(f"{where}: on_error names the step itself")
        if step.on_error not in wf.steps:
            raise ValidationError(f"{where}: on_error names unknown step {step.on_error!r}")

    if step.retry is not None:
        for name in ("max_retries", "initial_backoff_sec", "max_backoff_sec", "multiplier"):
            _check_number(getattr(step.retry, name), f"{where}: retry.{name}")

    _check_number(step.timeout_sec, f"{where}: timeout_sec")
    _check_number(step.delay_sec, f"{where}: delay_sec")
    if step.delay_until:
        try:
            parse_ts(step.delay_until, field="delay_until")
        except ValueError:
            raise ValidationError(
                f"{where}: delay_until is not an RFC 3339 timestamp: {step.delay_until!r}"
            ) from None


def _check_number(value: Any, where: str) -> None:
    """A finite number ≥ 0 (0 means "not set" for every such field)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValidationError(f"{where} must be a finite number, got {value!r}")
    if value < 0:
        raise ValidationError(f"{where} must be >= 0, got {value!r}")


def _check_expr(expr: str, where: str) -> None:
    """A non-empty expression must compile; empty means "not set"."""
    if not expr or not expr.strip():
        return
    try:
        compile_expr(expr)
    except ExpressionError as exc:
        raise ValidationError(f"{where}: invalid expression {expr!r}: {exc}") from None


def _check_schema(schema: dict[str, Any], where: str) -> None:
    """An inline JSON Schema must be valid against its own metaschema; empty means unset."""
    if not schema:
        return
    if not isinstance(schema, dict):
        raise ValidationError(f"{where}: expected a JSON Schema object, got {schema!r}")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        at = exc.json_path if exc.path else ""
        suffix = f" (at {at})" if at and at != "$" else ""
        raise ValidationError(
            f"{where}: not a valid JSON Schema: {exc.message}{suffix}"
        ) from None


def _check_output_path(path: str, where: str) -> None:
    """A dotted path whose segments are all non-empty (SPEC §8)."""
    if not path:
        return
    if any(not segment.strip() for segment in path.split(".")):
        raise ValidationError(f"{where}: empty segment in {path!r}")


def _template_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string leaf of a nested dict/list, with its path (``input.a.b[0]``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _template_strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _template_strings(v, f"{path}[{i}]")


# ------------------------------------------------------------------------------ the graph


def _find_cycle(wf: Workflow) -> list[str]:
    """The first dependency cycle found, as ``[a, b, ..., a]``; empty if there is none.

    Depth-first search with colours, roots and edges visited in definition order, so the
    same definition always yields the same cycle. The cycle is then rotated to start at its
    member defined first, and reads in dependency direction (``a -> b``: a depends on b).
    Unknown dependency names are ignored (reported elsewhere).
    """
    color = dict.fromkeys(wf.steps, _WHITE)
    order = {sid: i for i, sid in enumerate(wf.steps)}
    for root in wf.steps:
        if color[root] != _WHITE:
            continue
        # Iterative DFS: a stack of (node, iterator over its dependencies) plus the path.
        path: list[str] = [root]
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(wf.steps[root].depends_on))]
        color[root] = _GREY
        while stack:
            node, deps = stack[-1]
            advanced = False
            for dep in deps:
                if dep not in color:
                    continue
                if color[dep] == _GREY:
                    cycle = path[path.index(dep):]
                    first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                    cycle = cycle[first:] + cycle[:first]
                    return [*cycle, cycle[0]]
                if color[dep] == _WHITE:
                    color[dep] = _GREY
                    path.append(dep)
                    stack.append((dep, iter(wf.steps[dep].depends_on)))
                    advanced = True
                    break
            if not advanced:
                color[node] = _BLACK
                path.pop()
                stack.pop()
    return []
