"""Commands and timers (SPEC §7, §9): approve, cancel, timeouts, shell feedback, recovery,
and rerun_from."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

from ..errors import InvalidStateError, NotFoundError
from ..model import RunStatus, Step, StepRun, StepStatus, StepType, Workflow, WorkflowRun
from ..protocol import JobResult, JobStatus
from .dispatch import redispatch
from .events import ArmTimer, CancelJob, PublishAlert, TimerKind
from .finish import finish, stop_everything
from .outputs import get_path, set_path
from .ready import arm_run_timeout, build_alert
from .results import apply_result, locate, parse_job_id
from .state import Tx
from .status import set_run_status


def approve(tx: Tx, step_id: str, approved: bool) -> None:
    """Resolve a waiting approval. Raises before changing anything when it cannot."""
    run = tx.run
    if step_id not in tx.plan.workflow.steps:
        raise NotFoundError(f"run {run.id}: step '{step_id}' not found")
    sr = run.steps.get(step_id)
    if sr is None or sr.status != StepStatus.WAITING:
        state = sr.status.value if sr is not None else "not started"
        raise InvalidStateError(f"run {run.id}: step '{step_id}' not waiting ({state})")
    if approved:
        finish(tx, step_id, sr, StepStatus.SUCCEEDED, timeline="step_approved")
    else:
        finish(tx, step_id, sr, StepStatus.FAILED, message="approval rejected",
               timeline="step_rejected")


def cancel(tx: Tx, reason: str) -> None:
    """Cancel the run: every non-terminal step and child, one JobCancel per running job."""
    if tx.run.status.is_terminal:
        return
    stop_everything(tx, reason=reason)
    set_run_status(tx, RunStatus.CANCELLED, message="run cancelled")


def step_timeout(tx: Tx, target: str, job_id: str) -> None:
    """SPEC §6: no result within ``timeout_sec`` counts as a TIMEOUT result for that
    attempt; the job is told to stop."""
    found = locate(tx, target)
    if found is None:
        return
    step, sr, _ = found
    if sr.job_id != job_id or sr.status != StepStatus.RUNNING:
        return  # the attempt already ended
    if (sr.started_at is not None
            and tx.now < sr.started_at + timedelta(seconds=float(step.timeout_sec))):
        return  # the job started later than this timer assumed: a later timer is armed
    tx.effects.append(CancelJob(job_id, "step timed out"))
    message = f"step timed out after {step.timeout_sec:g}s"
    apply_result(tx, JobResult(job_id=job_id, status=JobStatus.TIMEOUT, error_message=message),
                 None)


def resend_due(tx: Tx) -> None:
    """Publish again every running job without a result for ``plan.resend_after`` seconds
    since its dispatch or start (SPEC §13). A bus that still owns the job (queued, or held
    by a live worker) ignores it; one that does not — its result was lost with an engine,
    or it died with a restarted router — runs it again. Changes no state."""
    after = tx.plan.resend_after
    run = tx.run
    if after <= 0 or run.status.is_terminal:
        return
    due = tx.now - timedelta(seconds=after)
    steps = tx.plan.workflow.steps
    for sid, sr in run.steps.items():
        step = steps.get(sid)
        if step is None or not step.type.is_worker_like or sr.status != StepStatus.RUNNING:
            continue
        if sr.children:
            for child in sr.children.values():
                if _resendable(child, due):
                    redispatch(tx, step, child, parent=sid)
        elif _resendable(sr, due):
            redispatch(tx, step, sr)


def _resendable(sr: StepRun, due: datetime) -> bool:
    return (sr.status == StepStatus.RUNNING and bool(sr.job_id)
            and sr.started_at is not None and sr.started_at <= due)


def job_started(tx: Tx, job_id: str) -> None:
    """A worker started ``job_id``: its step's timeout counts from now (SPEC §6)."""
    parsed = parse_job_id(job_id)
    if parsed is None or parsed[0] != tx.run.id or tx.run.status.is_terminal:
        return
    target = parsed[1]
    found = locate(tx, target)
    if found is None:
        return
    step, sr, parent = found
    if sr.job_id != job_id or sr.status != StepStatus.RUNNING or step.timeout_sec <= 0:
        return
    sr.started_at = tx.now
    if parent:
        tx.touch_child(parent, target)
    else:
        tx.touch_step(target)
    tx.effects.append(ArmTimer(tx.now + timedelta(seconds=float(step.timeout_sec)),
                               TimerKind.STEP_TIMEOUT, target, job_id))


def run_timeout(tx: Tx) -> None:
    """SPEC §7: the workflow's ``timeout_sec`` elapsed."""
    if tx.run.status.is_terminal:
        return
    set_run_status(tx, RunStatus.TIMED_OUT, message="run timed out")


def dispatch_failed(tx: Tx, target: str, job_id: str, message: str) -> None:
    found = locate(tx, target)
    if found is None:
        return
    step, sr, parent = found
    if sr.job_id != job_id or sr.status != StepStatus.RUNNING:
        return
    finish(tx, step.id, sr, StepStatus.FAILED, parent=parent,
           message=f"dispatch failed: {message}")


def alert_outcome(tx: Tx, step_id: str, error: str) -> None:
    sr = tx.run.steps.get(step_id)
    if sr is None or sr.status != StepStatus.RUNNING:
        return
    if error:
        finish(tx, step_id, sr, StepStatus.FAILED, message=error, timeline="step_event_failed")
    else:
        finish(tx, step_id, sr, StepStatus.SUCCEEDED, timeline="step_event_emitted")


def recover(tx: Tx) -> None:
    """Re-arm every timer the stored run implies; dispatch nothing already running."""
    run = tx.run
    if run.status.is_terminal:
        return
    if run.status != RunStatus.PENDING:
        arm_run_timeout(tx)
    for sid, sr in run.steps.items():
        step = tx.plan.workflow.steps.get(sid)
        if step is None:
            continue
        if step.type == StepType.NOTIFY and sr.status == StepStatus.RUNNING:
            # its alert's outcome was lost with the previous engine: publish it again
            tx.effects.append(PublishAlert(sid, build_alert(step, sr.input)))
        _rearm(tx, step, sr)
        for child in sr.children.values():
            _rearm(tx, step, child, parent=sid)


def _rearm(tx: Tx, step: Step, sr: StepRun, parent: str = "") -> None:
    """Re-arm what ``sr`` waits for; publish its running job again (SPEC §12)."""
    if sr.status.is_terminal:
        return
    timeout_sec = step.timeout_sec
    if sr.next_attempt_at is not None:
        tx.effects.append(ArmTimer(sr.next_attempt_at, TimerKind.WAKE, sr.step_id))
        return
    if sr.status != StepStatus.RUNNING or not sr.job_id or sr.children:
        return
    if not step.type.is_worker_like:
        return
    redispatch(tx, step, sr, parent=parent)
    # From the last known start: the job may be running at a worker that will not report
    # its start again (the bus absorbs the duplicate), and the run must still end.
    if timeout_sec > 0:
        started = sr.started_at or tx.now
        tx.effects.append(ArmTimer(started + timedelta(seconds=float(timeout_sec)),
                                   TimerKind.STEP_TIMEOUT, sr.step_id, sr.job_id))


def rerun_from(
    workflow: Workflow,
    old: WorkflowRun,
    step_id: str,
    dry_run: bool,
    new_id: str,
    now: datetime,
    dependencies: set[str],
) -> WorkflowRun:
    """SPEC §9: a new pending run reusing ``old``'s input; with ``step_id``, the step's
    transitive ``dependencies`` (which must all have succeeded) are copied over."""
    if step_id and step_id not in workflow.steps:
        raise NotFoundError(f"run {old.id}: step '{step_id}' not found in workflow {workflow.id}")
    new = WorkflowRun(
        id=new_id,
        workflow_id=old.workflow_id,
        org_id=old.org_id,
        team_id=old.team_id,
        input=copy.deepcopy(old.input),
        status=RunStatus.PENDING,
        triggered_by=old.triggered_by,
        created_at=now,
        updated_at=now,
        labels=dict(old.labels),
        metadata=dict(old.metadata),
        rerun_of=old.id,
        rerun_step=step_id,
        dry_run=dry_run,
    )
    new.metadata["rerun_of"] = old.id
    if step_id:
        new.metadata["rerun_step"] = step_id
    if dry_run:
        new.metadata["dry_run"] = "true"
        new.labels["dry_run"] = "true"
    else:  # a real rerun of a dry run is real
        new.metadata.pop("dry_run", None)
        new.labels.pop("dry_run", None)
    old_steps_ctx = old.context.get("steps") if isinstance(old.context.get("steps"), dict) else {}
    kept_ctx: dict[str, object] = {}
    for dep in sorted(dependencies):
        prev = old.steps.get(dep)
        if prev is None or prev.status != StepStatus.SUCCEEDED:
            raise InvalidStateError(f"run {old.id}: dependency {dep} not succeeded")
        new.steps[dep] = copy.deepcopy(prev)
        assert isinstance(old_steps_ctx, dict)
        for key, value in old_steps_ctx.items():
            if key == dep or (key.startswith(dep + "[") and key.endswith("]")):
                kept_ctx[key] = copy.deepcopy(value)
    if kept_ctx:
        new.context["steps"] = kept_ctx
    for dep in sorted(dependencies):  # values the copied steps wrote at their output_path
        path = workflow.steps[dep].output_path.strip() if dep in workflow.steps else ""
        found, value = get_path(old.context, path)
        if found:
            set_path(new.context, path, copy.deepcopy(value))
    return new

