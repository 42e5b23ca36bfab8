"""``decide``: the entry point of the pure core, and ``decide_result``: its job results'.

(plan, run state, event, now) → effects, with the run state updated in place and the parts
that changed recorded in ``Outcome.changes`` (so the store writes only those). No I/O, no
clock, no randomness: the same inputs always give the same outputs, which is what makes
simulation and property tests cheap.

``decide_result(plan, state, result, output, now)`` decides a job result given bare, as
``decide`` decides ``ResultReceived(result, output)`` (both through ``decide_result_in``):
the engine's run task hands the core every result from the bus this way, without an event
object to build, fill in and dispatch on (tests/properties/test_quick_properties.py
compares both entries).

Each makes a new working area (``Tx``), which it returns as the outcome; ``decide_in`` and
``decide_result_in`` decide in one given, which a run task renews for each batch's first
event (``Tx.renew``) rather than making one per event (the same test compares the ways).
"""

from __future__ import annotations

from datetime import datetime

from ..model import RunStatus
from ..protocol import JobResult
from .commands import (
    alert_outcome,
    approve,
    cancel,
    dispatch_failed,
    job_started,
    recover,
    resend_due,
    run_timeout,
    step_timeout,
)
from .events import (
    AlertOutcome,
    Approve,
    CancelRun,
    DispatchFailed,
    Event,
    JobStarted,
    LoadedOutput,
    Recover,
    ResendDue,
    ResultReceived,
    Start,
    TimerFired,
    TimerKind,
)
from .plan import Plan
from .quick import quick_result, quick_start
from .ready import ready_pass
from .results import apply_result
from .state import Outcome, RunState, Tx


def decide(plan: Plan, state: RunState, event: Event, now: datetime) -> Outcome:
    """Apply ``event`` to ``state`` at wall-clock ``now``.

    Commands that cannot apply (approving a step that is not waiting) raise
    ``NotFoundError``/``InvalidStateError`` before changing anything. Results and timers
    never raise: stale or foreign ones change nothing (SPEC §6).
    """
    return decide_in(Tx(plan, state, now), event)


def decide_in(tx: Tx, event: Event) -> Outcome:
    """``decide`` in the working area ``tx`` (new, or ``Tx.renew``ed: the run task renews
    one per run rather than making one per event), returned as the outcome."""
    # the most frequent event first, tested without the ``match`` (a class pattern reads its
    # attributes through a generic lookup)
    if event.__class__ is ResultReceived or isinstance(event, ResultReceived):
        return decide_result_in(tx, event.result, event.output)
    state = tx.state
    match event:  # each case is an isinstance check
        case Start():
            if not quick_start(tx):
                ready_pass(tx)
        case Recover():
            recover(tx)
            if state.run.status != RunStatus.PENDING:  # a created, never started run waits
                ready_pass(tx)
        case JobStarted(job_id=job_id):
            job_started(tx, job_id)
        case Approve(step_id=step_id, approved=approved):
            approve(tx, step_id, approved)
            ready_pass(tx)
        case CancelRun(reason=reason):
            cancel(tx, reason)
        case TimerFired(kind=TimerKind.WAKE):
            ready_pass(tx)
        case TimerFired(kind=TimerKind.STEP_TIMEOUT, target=target, job_id=job_id):
            step_timeout(tx, target, job_id)
            ready_pass(tx)
        case ResendDue():
            resend_due(tx)
        case TimerFired(kind=TimerKind.RUN_TIMEOUT):
            run_timeout(tx)
        case DispatchFailed(target_id=target, job_id=job_id, message=message):
            dispatch_failed(tx, target, job_id, message)
            ready_pass(tx)
        case AlertOutcome(step_id=step_id, error=error):
            alert_outcome(tx, step_id, error)
            ready_pass(tx)
        case _:
            raise TypeError(f"decide: unknown event {event!r}")
    return _header_marked(tx)


def decide_result(plan: Plan, state: RunState, result: JobResult,
                  output: LoadedOutput | None, now: datetime) -> Outcome:
    """Apply the job result ``result`` (with its result payload ``output``, as the shell
    loaded it, or None) to ``state`` at ``now``: what ``decide`` does of
    ``ResultReceived(result, output)``. Never raises for a stale or foreign result: it
    changes nothing (SPEC §6)."""
    return decide_result_in(Tx(plan, state, now), result, output)


def decide_result_in(tx: Tx, result: JobResult, output: LoadedOutput | None) -> Outcome:
    """``decide_result`` in the working area ``tx`` (new, or ``Tx.renew``ed), returned as
    the outcome."""
    if quick_result(tx, result, output):
        return tx  # the short way always changes the run: its header is marked
    if apply_result(tx, result, output):
        ready_pass(tx)
    return _header_marked(tx)


def _header_marked(tx: Tx) -> Outcome:
    """``tx``, its run's header stamped and marked for the write if anything changed."""
    if tx.changes:
        tx.run.updated_at = tx.now
        tx.changes.header = True
    return tx


__all__ = ["Outcome", "decide", "decide_in", "decide_result", "decide_result_in"]
