"""Folding a job result into the run (SPEC §6), retries and their backoff."""

from __future__ import annotations

from datetime import timedelta

from ..errors import CordtrioError
from ..model import RetryConfig, Step, StepRun, StepStatus
from ..payloads import RESULT_PREFIX, pointer_problem
from ..protocol import JobResult, JobStatus
from ..schemas import validate_value
from .dispatch import validate_with_registry
from .events import ArmTimer, LoadedOutput, TimerKind
from .finish import finish
from .outputs import record_output
from .state import Tx, child_index

_RETRYABLE = (JobStatus.FAILED, JobStatus.DENIED, JobStatus.TIMEOUT)
# Read on every result: module constants (``StepStatus.X`` costs ~90 ns on Python 3.11).
_RUNNING, _SUCCEEDED = StepStatus.RUNNING, StepStatus.SUCCEEDED
_JOB_SUCCEEDED = JobStatus.SUCCEEDED


def parse_job_id(job_id: object) -> tuple[str, str, int] | None:
    """``<run>:<step>@<n>`` → (run, step or child id, n). Splits on the LAST ``:`` (run ids
    may contain ``:``); n is 0 when absent or malformed. None for an unusable id."""
    if not isinstance(job_id, str) or ":" not in job_id:
        return None
    run_id, _, rest = job_id.rpartition(":")
    target, sep, number = rest.rpartition("@")
    if not sep:
        target, number = rest, ""
    attempt = int(number) if number.isdigit() else 0
    if not run_id or not target:
        return None
    return run_id, target, attempt


def split_target(target: str) -> tuple[str, bool]:
    """``step[3]`` → (``step``, True); ``step`` → (``step``, False)."""
    if target.endswith("]") and "[" in target:
        base = target[: target.rindex("[")]
        index = target[len(base) + 1 : -1]
        if base and index.isdigit():
            return base, True
    return target, False


def locate(tx: Tx, target: str) -> tuple[Step, StepRun, str] | None:
    """(step definition, StepRun, parent id or "") of a step or child id."""
    base, is_child = split_target(target)
    step = tx.plan.workflow.steps.get(base)
    if step is None:
        # a step whose own id ends in [n]
        step = tx.plan.workflow.steps.get(target)
        if step is None:
            return None
        base, is_child = target, False
    if is_child:
        parent = tx.run.steps.get(base)
        child = parent.children.get(target) if parent is not None else None
        return (step, child, base) if child is not None else None
    sr = tx.run.steps.get(base)
    return (step, sr, "") if sr is not None else None


def apply_result(tx: Tx, result: JobResult, output: LoadedOutput | None) -> bool:
    """Apply ``result``; False (nothing changed) for stale, duplicate or foreign results."""
    parsed = parse_job_id(result.job_id)
    if parsed is None or parsed[0] != tx.run.id or tx.run.status.is_terminal:
        return False
    found = locate(tx, parsed[1])
    if found is None:
        return False
    step, sr, parent = found
    if sr.job_id != result.job_id or sr.status != _RUNNING:
        return False  # a stale attempt, or a duplicate of one already handled
    if not parent:
        tx.state.started.pop(sr.job_id, None)  # (``RunState.started``) its result is here
    sr.attempts = max(sr.attempts, parsed[2])
    status = result.status
    message = result.error_message
    if status == _JOB_SUCCEEDED:
        _succeeded(tx, step, sr, parent, result.result_ptr, output)
    elif status in _RETRYABLE:
        if retry_allowed(step.retry, sr.attempts):
            schedule_retry(tx, step, sr, parent, message)
        else:
            final = StepStatus.TIMED_OUT if status == JobStatus.TIMEOUT else StepStatus.FAILED
            finish(tx, step.id, sr, final, parent=parent, message=message)
        if result.error_code:  # what kind of failure (an exception's class, WorkerLost)
            sr.error["code"] = result.error_code
    elif status == JobStatus.CANCELLED:
        finish(tx, step.id, sr, StepStatus.CANCELLED, parent=parent, message=message)
    else:
        name = status.name if isinstance(status, JobStatus) else str(status)
        finish(tx, step.id, sr, StepStatus.FAILED, parent=parent,
               message=f"unexpected status: {name}")
    return True


def _succeeded(
    tx: Tx, step: Step, sr: StepRun, parent: str, result_ptr: str, output: LoadedOutput | None
) -> None:
    # a pointer the shell read at is one of the payload namespace (``LoadedOutput``)
    refused = pointer_problem(result_ptr, RESULT_PREFIX) if result_ptr and (
        output is None or not output.loaded or output.error) else ""
    if refused:  # a pointer outside the payload namespace: nothing of it enters the run
        message = f"step '{sr.step_id}': {refused}"
        tx.timeline("step_output_invalid", step_id=sr.step_id, job_id=sr.job_id,
                    status="failed", message=message)
        finish(tx, step.id, sr, StepStatus.FAILED, parent=parent, message=message)
        return
    if result_ptr and (step.output_schema or step.output_schema_id.strip()):
        problem = output_problem(tx, step, output)
        if problem:
            tx.timeline("step_output_invalid", step_id=sr.step_id, job_id=sr.job_id,
                        status="failed", result_ptr=result_ptr, message=problem)
            finish(tx, step.id, sr, StepStatus.FAILED, parent=parent, message=problem,
                   result_ptr=result_ptr)
            return
    sr.output = result_ptr or None
    if result_ptr:
        record_output(tx, sr.step_id, step, result_ptr, output, is_child=bool(parent))
    finish(tx, step.id, sr, _SUCCEEDED, parent=parent, result_ptr=result_ptr)


def output_problem(tx: Tx, step: Step, output: LoadedOutput | None) -> str:
    """Why the loaded output violates the step's output schema ("" when it is fine)."""
    where = f"step '{step.id}' output"
    if output is None or not output.loaded or output.error:
        why = output.error if output is not None and output.error else "not loaded"
        return f"{where}: cannot load result payload: {why}"
    try:
        if step.output_schema:
            validate_value(step.output_schema, output.value, where=where)
        else:
            validate_with_registry(tx.plan, step.output_schema_id.strip(), output.value,
                                   where=where)
    except CordtrioError as exc:
        return str(exc)
    return ""


def retry_allowed(retry: RetryConfig | None, attempts: int) -> bool:
    """Retry while ``attempts <= max_retries`` (max_retries = 2 → at most 3 attempts)."""
    return retry is not None and retry.max_retries > 0 and attempts <= retry.max_retries


def backoff_seconds(retry: RetryConfig | None, attempts: int) -> int:
    """initial (default 1) × multiplier^(attempts−1) (multiplier ≤ 1 means 2), capped by
    ``max_backoff_sec`` when > 0, truncated to whole seconds."""
    if retry is None:
        return 1
    initial = retry.initial_backoff_sec if retry.initial_backoff_sec > 0 else 1
    multiplier = retry.multiplier if retry.multiplier > 1 else 2
    exponent = max(attempts, 1) - 1
    try:
        delay = float(initial) * float(multiplier) ** exponent
    except OverflowError:
        delay = float("inf")
    if retry.max_backoff_sec > 0:
        delay = min(delay, float(retry.max_backoff_sec))
    return int(min(delay, 10 * 365 * 86400))  # cap at ten years: no overflow, ever


def schedule_retry(tx: Tx, step: Step, sr: StepRun, parent: str, message: str) -> None:
    delay = backoff_seconds(step.retry, sr.attempts)
    # index the children before this one changes (a rebuild would see it in backoff)
    idx = tx.state.fanout(parent, tx.now) if parent else None
    sr.status = StepStatus.PENDING
    sr.next_attempt_at = tx.now + timedelta(seconds=delay)
    sr.error = {"message": message} if message else {}
    if idx is not None:
        idx.running -= 1
        idx.backoff.add(child_index(sr.step_id))
        tx.touch_child(parent, sr.step_id)
    else:
        tx.touch_step(sr.step_id)
    tx.timeline("step_retry_scheduled", step_id=sr.step_id, job_id=sr.job_id,
                status="pending", message=message,
                data={"attempt": sr.attempts, "backoff_sec": delay})
    tx.effects.append(ArmTimer(sr.next_attempt_at, TimerKind.WAKE, sr.step_id))
