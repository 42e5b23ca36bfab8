"""The expression scope of a step (SPEC §2): ``input``, ``ctx``, ``steps``, ``item``,
and ``error`` for a triggered ``on_error`` handler."""

from __future__ import annotations

from typing import Any

from ..model import StepStatus, WorkflowRun
from .plan import Plan

_NO_ITEM = object()


def build_scope(plan: Plan, run: WorkflowRun, step_id: str, item: Any = _NO_ITEM) -> dict[str, Any]:
    """Scope for evaluating ``step_id``'s expressions. Values are shared, not copied:
    evaluation never mutates them."""
    steps = run.context.get("steps")
    scope: dict[str, Any] = {
        "input": run.input,
        "ctx": run.context,
        "steps": steps if isinstance(steps, dict) else {},
    }
    if item is not _NO_ITEM:
        scope["item"] = item
    if step_id in plan.handlers:
        error = handler_error(plan, run, step_id)
        if error is not None:
            scope["error"] = error
    return scope


def handler_error(plan: Plan, run: WorkflowRun, handler_id: str) -> dict[str, Any] | None:
    """``{step_id, message}`` of the failure that triggered ``handler_id`` (the first, in
    definition order, of the steps naming it in ``on_error`` that failed)."""
    for source in plan.handler_sources.get(handler_id, ()):
        sr = run.steps.get(source)
        if sr is not None and sr.status in (StepStatus.FAILED, StepStatus.TIMED_OUT):
            return {"step_id": source, "message": str(sr.error.get("message", ""))}
    return None


NO_ITEM = _NO_ITEM
