"""The two most common events, decided the short way: a new run starts and its first
steps are plain jobs; a plain job step succeeded, and those of its dependents (plain jobs
not started yet) whose dependencies have all succeeded start.

Why: every run starts like this and every step of a chain ends like this, and the general
path (``apply_result``, then a ``ready_pass`` that absorbs the touched steps into the
``Frontier``, asks ``may_act`` of each, sorts the live ones and ``_visit``s them, then
recomputes the run status) spends most of its time finding out what the plan already
says: which steps can move.

``quick_start`` and ``quick_result`` first check everything that makes the short way exact
(for a result: no step in the frontier is live, no failure stands, the run is running, the
job is one of the run's started since its load (``RunState.started``: its StepRun, found
without parsing its id) and still running, the step and its dependents are
``Plan.plain_jobs``, the dependents have no StepRun yet), and
return False having changed nothing when one does not hold: the general path then decides.
Otherwise they give the same effects in the same order, the same changes and the same run
as the general path (tests/properties/test_quick_properties.py replays random runs both
ways, tests/core/test_core_quick.py the corner cases), and leave the frontier as exact as
a rebuild.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from ..errors import CordtrioError
from ..model import NO_DATA, RunStatus, StepRun, StepStatus
from ..payloads import RESULT_PREFIX, pointer_problem
from ..protocol import JobResult, JobStatus
from .dispatch import build_payload, emit_job
from .events import LoadedOutput
from .frontier import Frontier
from .outputs import record_output
from .ready import _deps_succeeded, arm_run_timeout, may_act, ready_pass
from .scope import NO_ITEM, build_scope
from .state import Tx, timeline_row
from .status import set_run_status

# Module constants: reading ``StepStatus.X`` costs an enum descriptor call on Python 3.11.
_JOB_SUCCEEDED = JobStatus.SUCCEEDED
_RUN_PENDING, _RUN_RUNNING = RunStatus.PENDING, RunStatus.RUNNING
_RUNNING, _SUCCEEDED = StepStatus.RUNNING, StepStatus.SUCCEEDED
_SUCCEEDED_TEXT = str(StepStatus.SUCCEEDED.value)
_new = object.__new__


def quick_result(tx: Tx, result: JobResult, output: LoadedOutput | None) -> bool:
    """Decide ``ResultReceived(result, output)`` as ``apply_result`` + ``ready_pass``
    would; False, with nothing changed, when this is not the plain case."""
    run = tx.run
    state = tx.state
    front = state.frontier
    if (result.status is not _JOB_SUCCEEDED or run.status is not _RUN_RUNNING
            or front is None or front.plan is not tx.plan):
        return False
    if front.dirty or front.recheck:
        # what the ready pass would do first; the result changes the liveness of its step
        # and dependents only, which the code below works out itself
        front.refresh(run, partial(may_act, tx))
    if front.live or front.failed or front.timed_out:
        return False
    # The StepRun the job set running, found by its id (``RunState.started``) rather than
    # by parsing it: the run's step of that id (checked: a StepRun kept under another key,
    # or replaced by a caller, is the general path's business), whose attempt the id's
    # number is, as ``parse_job_id`` would find.
    job_id = result.job_id
    started = state.started
    try:
        sr = started.get(job_id)
    except TypeError:  # unhashable: not a job id
        return False
    if sr is None or sr.job_id != job_id or sr.status is not _RUNNING:
        return False
    target = sr.step_id
    job = front.plan.plain.get(target)
    steps = run.steps
    if job is None or not job.result_quick or steps.get(target) is not sr:
        return False
    result_ptr = result.result_ptr
    if output is not None and output.loaded and not output.error:
        loaded = output  # read by the shell: at a pointer of the payload namespace
    else:
        loaded = None
        if result_ptr and pointer_problem(result_ptr, RESULT_PREFIX):
            return False  # refused: the general path's business
    dependents = job.dependents
    for sid in dependents:
        if sid in steps:
            return False
    del started[job_id]

    # ``apply_result`` → ``_succeeded`` → ``finish``, for a top-level step that succeeded
    now = tx.now
    changes = tx.changes
    if result_ptr:
        sr.output = result_ptr
        if not job.writes_path:
            # ``record_output``'s common case, without its call: the entry, and its change
            ctx_steps = run.context.get("steps")
            if ctx_steps.__class__ is not dict:  # ``_steps_map``: a run's first output
                ctx_steps = run.context["steps"] = {}
            if loaded is not None and not loaded.too_large:
                ctx_steps[target] = {"result_ptr": result_ptr, "output": loaded.value}
            else:
                ctx_steps[target] = {"result_ptr": result_ptr}
            changes.context_steps.add(target)
        else:
            record_output(tx, target, job.step, result_ptr, output, is_child=False)
    else:
        sr.output = None
    sr.status = _SUCCEEDED
    sr.completed_at = now
    sr.next_attempt_at = None
    if sr.error:
        sr.error = {}
    changes.steps.add(target)
    # the ``step_completed`` row, and the hook's effect (the plan's: the same every time)
    tx.rows.append(timeline_row(now, "step_completed", run.id, run.workflow_id, target,
                                job_id, _SUCCEEDED_TEXT, result_ptr, "", NO_DATA))
    tx.effects.append(job.succeeded)

    # the ready pass: only the dependents can have become ready
    run.updated_at = now  # what ``decide`` does of any event that changed the run
    changes.header = True
    if dependents and not _start_plain(tx, front, dependents, target,
                                       job.dependents_copy_input):
        # one fails instead of starting, which may start handlers: the general ready
        # pass, from where ``apply_result`` would leave it
        front.dirty.append(target)
        ready_pass(tx)
        return True
    front.seen[job.position] = _SUCCEEDED  # what ``Frontier.absorb`` would do
    front.unfinished -= 1
    # ``update_run_status`` for a running run; without a call while steps are left and none
    # waits (no failure stands: checked above)
    if front.waiting or not front.unfinished:
        status = front.run_status(run)
        if status != _RUN_RUNNING:
            set_run_status(tx, status)
    return True


def quick_start(tx: Tx) -> bool:
    """Decide ``Start`` for a new run whose first steps are all plain jobs as
    ``ready_pass`` would; False, with nothing changed, otherwise."""
    run = tx.run
    plan = tx.plan
    roots = plan.plain_roots
    if not roots or run.status is not _RUN_PENDING or run.steps:
        return False
    set_run_status(tx, _RUN_RUNNING)
    arm_run_timeout(tx)
    front = Frontier.new(plan)  # ``Frontier.build`` of a run without steps
    tx.state.frontier = front
    if not _start_plain(tx, front, roots, "", plan.plain_roots_copy_input):
        ready_pass(tx)  # one fails instead of starting: the general pass from here
        return True
    front.live.clear()  # the roots, all started
    # ``update_run_status`` would find the run running (its roots are), as it is
    return True


def _start_plain(tx: Tx, front: Frontier, candidates: Iterable[str], done: str = "",
                 copied: bool = False) -> bool:
    """Start those of ``candidates`` (plain jobs without a StepRun, in definition order)
    whose dependencies all succeeded (``done`` just did), as ``_visit`` would one after the
    other, and mark them running in ``front`` (its count of steps left to finish stays as
    it is: a started job is still one). False, having changed nothing, when one cannot
    start (its input does not render or validate): every input that is not a copy of the
    run's is built before anything starts, which gives the same inputs since starting a job
    changes nothing an input reads. ``copied``: every candidate's input is such a copy
    (``PlainJob.dependents_copy_input``): none can fail, and they start in one pass."""
    run = tx.run
    steps = run.steps
    jobs = front.plan.plain
    if not copied:
        built: dict[str, dict[str, Any]] = {}
        for sid in candidates:
            job = jobs[sid]
            if job.copies_input or (job.sole_dependency != done
                                    and not _deps_succeeded(tx, job.step)):
                continue
            step = job.step
            try:
                scope = build_scope(tx.plan, run, sid) if step.input else {}
                built[sid] = build_payload(tx.plan, run, step, scope, NO_ITEM)
            except CordtrioError:
                return False
    # (the loop reads ``tx``'s and ``front``'s parts in place: it mostly runs once)
    for sid in candidates:
        job = jobs[sid]
        # (else its one dependency just succeeded; a candidate started here is running)
        if job.sole_dependency != done and not _deps_succeeded(tx, job.step):
            continue
        # ``build_payload``'s plainest case, or the input built above
        payload = dict(run.input) if job.copies_input else built[sid]
        job_id = f"{run.id}:{sid}@1"
        # the StepRun ``start_job`` makes of a new one, made so at once (its fields set
        # here, in field order: a third less than ``__init__``)
        sr = _new(StepRun)
        sr.step_id = sid
        sr.status = _RUNNING
        sr.started_at = tx.now
        sr.completed_at = sr.next_attempt_at = None
        sr.attempts = 1
        sr.input = payload
        sr.output = None
        sr.error = {}
        sr.job_id = job_id
        sr.item = None
        sr.children = {}
        steps[sid] = sr
        tx.state.started[job_id] = sr
        tx.changes.steps.add(sid)  # ``tx.touch_step`` but for the frontier, made exact below
        emit_job(tx, job.shape, sid, job_id, payload)
        # What ``Frontier.absorb`` would make of the touch (never put in ``front.dirty``):
        # its status seen (a step without a StepRun that starts stays ``unfinished``); and
        # the started job cannot act, nor can the steps depending on it.
        front.seen[job.position] = _RUNNING
    return True
