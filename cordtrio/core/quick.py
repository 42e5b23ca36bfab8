"""The most common event, decided the short way: a plain job step succeeded, and those of
its dependents (plain jobs not started yet) whose dependencies have all succeeded start.

Why: every step of a chain ends like this, and the general path (``apply_result``, then a
``ready_pass`` that absorbs the touched steps into the ``Frontier``, asks ``may_act`` of
each, sorts the live ones and ``_visit``s them, then recomputes the run status) spends
most of its time finding out what this knows from the plan: which steps can move.

``quick_result`` first checks everything that makes the short way exact (no step in the
frontier is live, no failure stands, the run is running, the step and its dependents are
``Plan.plain_jobs``, the dependents have no StepRun yet), and returns False having changed
nothing when one does not hold: the general path then decides. Otherwise it gives the
same effects in the same order, the same changes and the same run as the general path
(tests/core/test_core_quick.py replays random runs both ways), and leaves the frontier as
exact as a rebuild.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..errors import CordtrioError
from ..model import RunStatus, Step, StepRun, StepStatus, TimelineEvent
from ..payloads import RESULT_PREFIX, pointer_problem
from ..protocol import JobResult, JobStatus
from .dispatch import build_payload, start_job
from .events import LoadedOutput, RecordTimeline, StepFinished
from .outputs import record_output
from .ready import may_act, ready_pass
from .results import parse_job_id
from .scope import NO_ITEM, build_scope
from .state import Tx
from .status import update_run_status

# Module constants: reading ``StepStatus.X`` costs an enum descriptor call on Python 3.11.
_JOB_SUCCEEDED = JobStatus.SUCCEEDED
_RUN_RUNNING = RunStatus.RUNNING
_RUNNING, _SUCCEEDED = StepStatus.RUNNING, StepStatus.SUCCEEDED
_SUCCEEDED_TEXT = str(StepStatus.SUCCEEDED.value)


def quick_result(tx: Tx, result: JobResult, output: LoadedOutput | None) -> bool:
    """Decide ``ResultReceived(result, output)`` as ``apply_result`` + ``ready_pass``
    would; False, with nothing changed, when this is not the plain case."""
    run = tx.run
    plan = tx.plan
    front = tx.state.frontier
    if (result.status is not _JOB_SUCCEEDED or run.status is not _RUN_RUNNING
            or front is None or front.plan is not plan):
        return False
    if front.dirty or front.recheck:
        # what the ready pass would do first; the result changes the liveness of its step
        # and dependents only, which the code below works out itself
        front.refresh(run, partial(may_act, tx))
    if front.live or front.failed or front.timed_out:
        return False
    job_id = result.job_id
    parsed = parse_job_id(job_id)
    if parsed is None or parsed[0] != run.id:
        return False
    target = parsed[1]
    plain = plan.plain_jobs
    steps = run.steps
    sr = steps.get(target)
    if (target not in plain or sr is None or sr.job_id != job_id or sr.status is not _RUNNING
            or sr.children):
        return False
    step = plan.workflow.steps[target]
    result_ptr = result.result_ptr
    if result_ptr and (pointer_problem(result_ptr, RESULT_PREFIX) or step.output_schema
                       or step.output_schema_id.strip()):
        return False  # refused, or to validate: the general path's business
    dependents = plan.dependents.get(target, ())
    for sid in dependents:
        if sid not in plain or sid in steps:
            return False

    # ``apply_result`` → ``_succeeded`` → ``finish``, for a top-level step that succeeded
    now = tx.now
    sr.attempts = max(sr.attempts, parsed[2])
    sr.output = result_ptr or None
    if result_ptr:
        record_output(tx, target, step, result_ptr, output, is_child=False)
    sr.status = _SUCCEEDED
    sr.completed_at = now
    sr.next_attempt_at = None
    sr.error = {}
    tx.changes.steps.add(target)
    effects = tx.effects
    effects.append(RecordTimeline(TimelineEvent(
        now, "step_completed", run.id, run.workflow_id, target, job_id, _SUCCEEDED_TEXT,
        result_ptr, "", {})))
    effects.append(StepFinished(target, _SUCCEEDED))

    # the ready pass: only the dependents can have become ready, and they start in
    # definition order (``dependents`` is in that order)
    ready: list[tuple[Step, dict[str, Any]]] = []
    defs = plan.workflow.steps
    for sid in dependents:
        dep_step = defs[sid]
        if not _deps_succeeded(steps, dep_step):
            continue
        try:
            scope = build_scope(plan, run, sid) if dep_step.input else {}
            ready.append((dep_step, build_payload(plan, run, dep_step, scope, NO_ITEM)))
        except CordtrioError:
            # this step fails instead of starting, which may start handlers: the general
            # ready pass, from where ``apply_result`` would leave it
            front.dirty.append(target)
            ready_pass(tx)
            return True
    position = plan.rechecks  # a step's position in ``order`` comes first
    front.seen[position[target][0]] = _SUCCEEDED
    front.unfinished += len(ready) - 1  # the target ended, the started ones run
    front.absent -= len(ready)
    for dep_step, payload in ready:
        sid = dep_step.id
        dep = StepRun(step_id=sid)
        steps[sid] = dep
        start_job(tx, dep_step, dep, f"{run.id}:{sid}@1", payload)
        front.seen[position[sid][0]] = _RUNNING
    # What ``Frontier.absorb`` would make of the touches: the counts above; ``live``
    # stays empty (a finished step, a running plain job and a step with a dependency not
    # succeeded yet cannot act).
    front.dirty.clear()
    update_run_status(tx)
    return True


def _deps_succeeded(steps: dict[str, Any], step: Step) -> bool:
    for dep in step.depends_on:
        sr = steps.get(dep)
        if sr is None or sr.status != _SUCCEEDED:
            return False
    return True
