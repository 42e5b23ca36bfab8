"""The run status rule (SPEC §7) and what happens when a run's status changes."""

from __future__ import annotations

from ..model import NO_DATA, RunStatus, StepStatus, WorkflowRun
from .finish import stop_everything
from .plan import Plan
from .state import Tx, timeline_row

# Module constants: reading ``RunStatus.X`` costs an enum descriptor call on Python 3.11.
_RUNNING, _SUCCEEDED = RunStatus.RUNNING, RunStatus.SUCCEEDED
_STOPS = (RunStatus.FAILED, RunStatus.TIMED_OUT)
"""The statuses that stop every job still running."""


def compute_run_status(plan: Plan, run: WorkflowRun) -> RunStatus:
    """SPEC §7 over the workflow's steps. Untriggered ``on_error`` handlers do not count;
    while a triggered handler is still working, a standing failure keeps the run running."""
    if run.status in (RunStatus.CANCELLED, RunStatus.TIMED_OUT):
        return run.status
    failed = timed_out = waiting = False
    all_succeeded = True
    handler_busy = False
    for sid in plan.order:
        sr = run.steps.get(sid)
        if sr is None:
            if sid not in plan.handlers:
                all_succeeded = False
            continue
        status = sr.status
        if status in (StepStatus.FAILED, StepStatus.CANCELLED):
            failed = True
        elif status == StepStatus.TIMED_OUT:
            timed_out = True
        elif status == StepStatus.WAITING:
            waiting = True
            all_succeeded = False
            if sid in plan.handlers:
                handler_busy = True  # a triggered approval handler is not terminal yet
        elif status != StepStatus.SUCCEEDED:
            all_succeeded = False
            if sid in plan.handlers:
                handler_busy = True
    if (failed or timed_out) and handler_busy:
        return RunStatus.RUNNING
    if failed:
        return RunStatus.FAILED
    if timed_out:
        return RunStatus.TIMED_OUT
    if waiting:
        return RunStatus.WAITING
    if all_succeeded:
        return RunStatus.SUCCEEDED
    return RunStatus.RUNNING


def failure_stands(plan: Plan, run: WorkflowRun) -> bool:
    """A counted step has failed: only triggered handlers may still start. (The ready pass
    reads this from its ``Frontier``; this scan is the reference the tests compare.)"""
    for sid in plan.order:
        sr = run.steps.get(sid)
        if sr is not None and sr.status in (
            StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT
        ):
            return True
    return False


def set_run_status(tx: Tx, status: RunStatus, *, message: str = "") -> None:
    """Change the run's status: timestamps, the ``run_status`` timeline event, and for a
    failed or timed-out run, a ``JobCancel`` for every job still running."""
    run = tx.run
    if run.status == status:
        return
    run.status = status
    tx.changes.header = True  # ``tx.touch_header()``
    if status is _RUNNING and run.started_at is None:
        run.started_at = tx.now
    if status.is_terminal:
        run.completed_at = tx.now
        if status is _SUCCEEDED:
            run.output = _run_output(tx.plan, run)
        elif status in _STOPS and not run.error:
            run.error = _run_error(tx.plan, run, message)
    # (``tx.timeline``'s row, without its keywords; ``str`` of a StrEnum: its value)
    tx.rows.append(timeline_row(tx.now, "run_status", run.id, run.workflow_id, "", "",
                                str(status), "", message, NO_DATA))
    if status in _STOPS:
        stop_everything(tx, reason=f"workflow run {status.value}")


def update_run_status(tx: Tx) -> None:
    """Recompute the status from the steps and apply it if it changed (from the frontier's
    counts when the ready pass built one: O(1) instead of a scan of every step)."""
    if tx.run.status.is_terminal:
        return
    front = tx.state.frontier
    if front is not None and front.plan is tx.plan:
        status = front.run_status(tx.run)
    else:
        status = compute_run_status(tx.plan, tx.run)
    if status != tx.run.status:
        set_run_status(tx, status)


def _run_output(plan: Plan, run: WorkflowRun) -> dict[str, object]:
    """The outputs of the run's sink steps (steps nothing depends on), by step id."""
    steps = run.context.get("steps")
    if not isinstance(steps, dict):
        return {}
    out: dict[str, object] = {}
    sinks = plan.sinks
    if sinks is None:
        sinks = tuple(sid for sid in plan.order
                      if sid not in plan.dependents and sid not in plan.handlers)
    for sid in sinks:
        entry = steps.get(sid)
        if isinstance(entry, dict) and "output" in entry:
            out[sid] = entry["output"]
    return out


def _run_error(plan: Plan, run: WorkflowRun, message: str) -> dict[str, object]:
    """The first failed step (definition order) and its message."""
    for sid in plan.order:
        sr = run.steps.get(sid)
        if sr is not None and sr.status in (StepStatus.FAILED, StepStatus.TIMED_OUT):
            error: dict[str, object] = {"step_id": sid,
                                        "message": str(sr.error.get("message", ""))}
            if sr.error.get("code"):
                error["code"] = sr.error["code"]
            return error
    return {"message": message} if message else {}
