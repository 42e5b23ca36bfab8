"""Recording a step's output into the run context (SPEC §8)."""

from __future__ import annotations

from typing import Any

from ..model import Step
from .events import LoadedOutput
from .state import Tx


def record_output(
    tx: Tx, target_id: str, step: Step, result_ptr: str, output: LoadedOutput | None,
    *, is_child: bool,
) -> None:
    """``context.steps[target] = {result_ptr, output}``; for non-child steps with
    ``output_path``, also write the output (or the pointer when too large) at that path."""
    entry: dict[str, Any] = {"result_ptr": result_ptr}
    value: Any = result_ptr
    if output is not None and output.loaded and not output.error and not output.too_large:
        entry["output"] = output.value
        value = output.value
    steps = tx.run.context.get("steps")  # ``_steps_map``, inlined: one call less per result
    if type(steps) is not dict:
        steps = _steps_map(tx)
    steps[target_id] = entry
    tx.changes.context_steps.add(target_id)
    if not is_child and step.output_path.strip():
        write_output_path(tx, step.output_path, value)


def record_inline_output(tx: Tx, step: Step, value: Any) -> None:
    """Condition steps: their boolean goes where a job's output would."""
    _steps_map(tx)[step.id] = {"output": value}
    tx.changes.context_steps.add(step.id)
    if step.output_path.strip():
        write_output_path(tx, step.output_path, value)


def write_output_path(tx: Tx, path: str, value: Any) -> None:
    """Set ``value`` at dotted ``path`` in the context and record the changed key.

    Paths are validated when the workflow is saved; a path with an empty segment that
    slipped through is ignored rather than crashing the run."""
    top = set_path(tx.run.context, path, value)
    if top is not None:
        tx.changes.context_keys.add(top)


def split_path(path: str) -> list[str] | None:
    """``"a.b.c"`` → ``["a", "b", "c"]``; None when a segment is empty."""
    parts = [p.strip() for p in path.strip().split(".")]
    return None if not parts or any(not p for p in parts) else parts


def set_path(context: dict[str, Any], path: str, value: Any) -> str | None:
    """Write ``value`` at ``path``, creating maps on the way; returns the top-level key."""
    parts = split_path(path)
    if parts is None:
        return None
    cur = context
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value
    return parts[0]


def get_path(context: dict[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) at ``path``."""
    parts = split_path(path)
    if parts is None:
        return False, None
    cur: Any = context
    for part in parts:
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _steps_map(tx: Tx) -> dict[str, Any]:
    steps = tx.run.context.get("steps")
    if not isinstance(steps, dict):
        steps = {}
        tx.run.context["steps"] = steps
    return steps
