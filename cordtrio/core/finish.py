"""Terminal transitions of steps and for-each children, in one place.

Every path that ends a step (a job result, a dispatch error, a condition, a rejection, a
timeout, a cancellation) goes through ``finish`` so that the timeline, the
``on_step_finished`` hook, fan-out aggregation (SPEC §4) and ``on_error`` triggering (SPEC §7)
can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..model import NO_DATA, StepRun, StepStatus, TimelineEvent
from .events import CancelJob, StepFinished
from .outputs import record_inline_output
from .state import Tx, child_id, child_index

# Read on every step's end: module constants (reading ``StepStatus.X`` or ``.value`` goes
# through an enum descriptor on Python 3.11, ~90 ns each).
_SUCCEEDED, _CANCELLED = StepStatus.SUCCEEDED, StepStatus.CANCELLED
_PENDING, _RUNNING = StepStatus.PENDING, StepStatus.RUNNING
_FAILED_OR_TIMED_OUT = (StepStatus.FAILED, StepStatus.TIMED_OUT)


def finish(
    tx: Tx,
    step_id: str,
    sr: StepRun,
    status: StepStatus,
    *,
    parent: str = "",
    message: str = "",
    result_ptr: str = "",
    timeline: str | None = "step_completed",
) -> None:
    """Move ``sr`` (step ``step_id``, or a child of ``parent``) to terminal ``status``."""
    if parent:
        tx.state.fanout(parent, tx.now)  # index the children before this one changes
    previous = sr.status
    sr.status = status
    sr.completed_at = tx.now
    sr.next_attempt_at = None
    if status == _SUCCEEDED:
        sr.error = {}
    elif message or status != _CANCELLED:
        sr.error = {"message": message}  # this outcome's message, even when empty
    target = sr.step_id
    if parent:
        tx.touch_child(parent, target)
    else:
        tx.touch_step(target)
    if timeline:
        # ``tx.timeline`` inlined (every step ends here): the fields positionally, in
        # ``TimelineEvent``'s order; a StrEnum's str() is its value
        run = tx.run
        tx.rows.append(TimelineEvent(
            tx.now, timeline, run.id, run.workflow_id, target, sr.job_id, str(status),
            result_ptr, message, NO_DATA))
    tx.effects.append(StepFinished(target, status))
    if parent:
        _child_finished(tx, parent, sr, previous, status, message)
    elif status in _FAILED_OR_TIMED_OUT:
        _trigger_handler(tx, step_id, message)


def _child_finished(
    tx: Tx, parent_id: str, child: StepRun, previous: StepStatus, status: StepStatus, message: str
) -> None:
    idx = tx.state.fanout(parent_id, tx.now)
    i = child_index(child.step_id)
    if previous == _RUNNING:
        idx.running -= 1
    elif previous == _PENDING:
        idx.backoff.discard(i)
        if i >= idx.next_fresh:  # a never-dispatched child ended (e.g. cancelled)
            pass
    if status == _SUCCEEDED:
        idx.succeeded += 1
    else:
        idx.failed += 1
    parent = tx.run.steps.get(parent_id)
    if parent is None or parent.status != _RUNNING:
        return
    if status != _SUCCEEDED:
        why = f"for_each child {child.step_id} {status.value}"
        finish(tx, parent_id, parent, StepStatus.FAILED,
               message=f"{why}: {message}" if message else why)
        cancel_children(tx, parent_id, parent, reason=f"{why}, siblings cancelled")
    elif idx.succeeded == idx.total:
        _record_fanout_output(tx, parent_id, idx.total)
        finish(tx, parent_id, parent, StepStatus.SUCCEEDED)


def _record_fanout_output(tx: Tx, parent_id: str, total: int) -> None:
    """The parent's output is its children's outputs in index order (null where a child
    has no inline output), so ``${steps.<step>.output}`` works like for any step."""
    step = tx.plan.workflow.steps.get(parent_id)
    if step is None:
        return
    entries = tx.run.context.get("steps")
    entries = entries if isinstance(entries, dict) else {}
    outputs = []
    for i in range(total):
        entry = entries.get(child_id(parent_id, i))
        outputs.append(entry.get("output") if isinstance(entry, dict) else None)
    record_inline_output(tx, step, outputs)


def _trigger_handler(tx: Tx, step_id: str, message: str) -> None:
    """SPEC §7: a terminally failed step with ``on_error = H`` makes H ready."""
    step = tx.plan.workflow.steps.get(step_id)
    if step is None or not step.on_error or step_id in tx.plan.handlers:
        return  # no handler, or a handler's own on_error (not followed)
    handler = step.on_error
    if handler not in tx.plan.workflow.steps or handler in tx.run.steps:
        return  # unknown, or already triggered by an earlier failure
    tx.run.steps[handler] = StepRun(step_id=handler, status=StepStatus.PENDING)
    tx.touch_step(handler)
    tx.timeline(
        "step_error_handler_started",
        step_id=handler,
        status=str(StepStatus.PENDING.value),
        message=f"step {step_id} failed: {message}" if message else f"step {step_id} failed",
        data={"failed_step": step_id},
    )


def cancel_children(tx: Tx, parent_id: str, parent: StepRun, *, reason: str) -> None:
    """Cancel every non-terminal child; running ones also get a ``JobCancel``."""
    for child in parent.children.values():
        if child.status.is_terminal:
            continue
        if child.status == StepStatus.RUNNING and child.job_id:
            tx.effects.append(CancelJob(child.job_id, reason))
        child.status = StepStatus.CANCELLED
        child.completed_at = tx.now
        child.next_attempt_at = None
        tx.touch_child(parent_id, child.step_id)
    tx.state.fanouts.pop(parent_id, None)


def running_jobs(tx: Tx) -> Iterator[tuple[str, str, StepRun]]:
    """(parent or "", step id, StepRun) of every step/child with a job in flight."""
    for sid, sr in tx.run.steps.items():
        if sr.status != StepStatus.RUNNING:
            continue
        if sr.children:
            for child in sr.children.values():
                if child.status == StepStatus.RUNNING and child.job_id:
                    yield sid, child.step_id, child
        elif sr.job_id:
            yield "", sid, sr


def stop_everything(tx: Tx, *, reason: str, final: StepStatus = StepStatus.CANCELLED) -> None:
    """Run over: every non-terminal step and child becomes ``final``; each distinct running
    job gets one ``JobCancel``."""
    seen: set[str] = set()
    for sid, sr in tx.run.steps.items():
        if sr.children:
            for child in sr.children.values():
                if child.status.is_terminal:
                    continue
                if child.status == StepStatus.RUNNING and child.job_id not in seen and child.job_id:
                    seen.add(child.job_id)
                    tx.effects.append(CancelJob(child.job_id, reason))
                child.status = final
                child.completed_at = tx.now
                child.next_attempt_at = None
                tx.touch_child(sid, child.step_id)
        if sr.status.is_terminal:
            continue
        if sr.status == StepStatus.RUNNING and sr.job_id and sr.job_id not in seen:
            seen.add(sr.job_id)
            tx.effects.append(CancelJob(sr.job_id, reason))
        sr.status = final
        sr.completed_at = tx.now
        sr.next_attempt_at = None
        tx.touch_step(sid)
    tx.state.fanouts.clear()
