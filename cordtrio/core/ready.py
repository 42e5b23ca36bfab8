"""The ready pass (SPEC §3): visit the steps that can act (the run's ``Frontier``) in
definition order, start whatever became ready, and repeat until nothing changes."""

from __future__ import annotations

import heapq
from datetime import timedelta
from functools import partial
from typing import Any

from ..errors import CordtrioError, ExpressionError
from ..expr import evaluate, render, truthy
from ..model import RunStatus, Step, StepRun, StepStatus, StepType
from ..protocol import SystemAlert
from ..schemas import validate_value
from ..timeutil import parse_ts
from .dispatch import dispatch, validate_with_registry
from .events import ArmTimer, PublishAlert, TimerKind
from .fanout import pump_fanout, start_fanout
from .finish import finish
from .frontier import Frontier
from .outputs import record_inline_output
from .plan import SENDER_ID
from .scope import build_scope
from .state import Tx
from .status import set_run_status, update_run_status

_VISITABLE = (StepStatus.PENDING, StepStatus.WAITING)
_FAILED = (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT)
# Read on every visit: module constants (reading ``StepStatus.X`` costs ~90 ns on 3.11).
_PENDING, _RUNNING, _WAITING = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING
_SUCCEEDED = StepStatus.SUCCEEDED
_CONDITION, _APPROVAL = StepType.CONDITION, StepType.APPROVAL
_DELAY, _NOTIFY = StepType.DELAY, StepType.NOTIFY
_RUN_PENDING = RunStatus.PENDING


def ready_pass(tx: Tx) -> None:
    """Start every step whose dependencies succeeded; then recompute the run status.

    Each pass visits the frontier's live steps in definition order: the same steps, in the
    same order, a walk over every step would act on (the others' visits are no-ops, see
    ``may_act``). A step that becomes live during a pass is visited in that pass when it
    comes later in definition order, in the next pass otherwise, as with the full walk."""
    run = tx.run
    if run.status.is_terminal:
        return
    if run.status == _RUN_PENDING:
        set_run_status(tx, RunStatus.RUNNING)
        arm_run_timeout(tx)
    front = tx.state.frontier
    if front is None or front.plan is not tx.plan:
        front = frontier(tx)
    order = tx.plan.order

    acts = partial(may_act, tx)  # a C-level call: one Python frame per step checked, not two

    changed = True
    while changed and not run.status.is_terminal:
        changed = False
        front.refresh(run, acts)
        only_handlers = front.failure_stands(run)
        todo = sorted(front.live)  # a sorted list is a heap
        last = -1
        while todo:
            i = heapq.heappop(todo)
            if i <= last:
                continue  # pushed twice
            last = i
            sid = order[i]
            if _visit(tx, sid, only_handlers):
                changed = True
                # a failure in this pass: start nothing more (no dispatch-then-cancel)
                only_handlers = only_handlers or _failed(tx, sid)
                # Only a visit returning True can wake a step: one returning False at most
                # moved its own step to running, which unblocks nothing (what it touched is
                # absorbed by the next refresh).
                for j in front.refresh(run, acts):
                    if j > i:
                        heapq.heappush(todo, j)
        update_run_status(tx)


def frontier(tx: Tx) -> Frontier:
    """The run's frontier, built on first use (after a load, or for another plan)."""
    front = tx.state.frontier
    if front is None or front.plan is not tx.plan:
        front = Frontier.build(tx.plan, tx.run, partial(may_act, tx))
        tx.state.frontier = front
    return front


def may_act(tx: Tx, sid: str) -> bool:
    """False only when ``_visit(tx, sid, ...)`` is sure to return False with no side
    effect whatever the time, until the step's StepRun or a dependency's changes: an
    untriggered handler, a step waiting for its dependencies or an approval, a job in
    flight, a finished step. Mirrors ``_visit``'s checks, in its order."""
    sr = tx.run.steps.get(sid)
    is_handler = sid in tx.plan.handlers
    if sr is None:
        return not is_handler and _deps_succeeded(tx, tx.plan.workflow.steps[sid])
    status = sr.status
    if status == _RUNNING:
        step = tx.plan.workflow.steps[sid]
        return step.type == _DELAY or bool(step.for_each and sr.children)
    if status != _PENDING:
        return False  # finished, or an approval waiting
    return is_handler or _deps_succeeded(tx, tx.plan.workflow.steps[sid])


def _failed(tx: Tx, sid: str) -> bool:
    sr = tx.run.steps.get(sid)
    return sr is not None and sr.status in _FAILED


def arm_run_timeout(tx: Tx) -> None:
    wf = tx.plan.workflow
    if wf.timeout_sec > 0 and tx.run.started_at is not None:
        at = tx.run.started_at + timedelta(seconds=float(wf.timeout_sec))
        tx.effects.append(ArmTimer(at, TimerKind.RUN_TIMEOUT))


def _visit(tx: Tx, sid: str, only_handlers: bool) -> bool:
    """Advance one step. True when its status changed in a way that may unblock others."""
    plan = tx.plan
    step = plan.workflow.steps[sid]
    sr = tx.run.steps.get(sid)
    is_handler = sid in plan.handlers
    if is_handler and sr is None:
        return False  # an untriggered on_error handler never starts on its own
    if only_handlers and not is_handler:
        return False
    if sr is not None and sr.status == _RUNNING:
        if step.type == _DELAY:
            return _delay_tick(tx, step, sr)
        if step.for_each and sr.children:
            pump_fanout(tx, step, sr)
            return sr.status.is_terminal
        return False
    if sr is not None and sr.status not in _VISITABLE:
        return False
    if sr is not None and sr.status == _WAITING:
        return False  # an approval waits for approve_step
    if not is_handler and not _deps_succeeded(tx, step):
        return False
    kind = step.type
    if kind != _CONDITION and step.condition and (sr is None or sr.attempts == 0):
        gate = _condition_gate(tx, step, sr)
        if gate is not None:
            return gate
    if kind == _CONDITION:
        _condition_step(tx, step, _ensure(tx, sid, sr))
        return True
    if kind == _APPROVAL:
        sr = _ensure(tx, sid, sr)
        sr.status = StepStatus.WAITING
        sr.started_at = tx.now
        tx.touch_step(sid)
        tx.timeline("step_waiting", step_id=sid, status="waiting", message="approval requested")
        return True
    if kind == _DELAY:
        return _delay_start(tx, step, _ensure(tx, sid, sr))
    if kind == _NOTIFY:
        return _notify(tx, step, _ensure(tx, sid, sr))
    if step.for_each:
        start_fanout(tx, step, sr)
        return tx.run.steps[sid].status.is_terminal
    if sr is not None and sr.next_attempt_at is not None and sr.next_attempt_at > tx.now:
        return False  # backing off
    return not dispatch(tx, step, _ensure(tx, sid, sr))


def _ensure(tx: Tx, sid: str, sr: StepRun | None) -> StepRun:
    if sr is None:
        sr = StepRun(step_id=sid)
        tx.run.steps[sid] = sr
        tx.touch_step(sid)
    return sr


def _deps_succeeded(tx: Tx, step: Step) -> bool:
    steps = tx.run.steps
    for dep in step.depends_on:
        sr = steps.get(dep)
        if sr is None or sr.status != _SUCCEEDED:
            return False
    return True


def _condition_gate(tx: Tx, step: Step, sr: StepRun | None) -> bool | None:
    """A false gate skips the step (succeeded, no output); an error fails it."""
    try:
        ok = truthy(evaluate(step.condition, build_scope(tx.plan, tx.run, step.id)))
    except ExpressionError as exc:
        finish(tx, step.id, _ensure(tx, step.id, sr), StepStatus.FAILED,
               message=f"condition: {exc}")
        return True
    if ok:
        return None
    sr = _ensure(tx, step.id, sr)
    finish(tx, step.id, sr, StepStatus.SUCCEEDED, timeline="step_skipped",
           message="condition evaluated to false")
    return True


def _condition_step(tx: Tx, step: Step, sr: StepRun) -> None:
    sr.started_at = tx.now
    expr = step.condition.strip()
    if not expr:
        finish(tx, step.id, sr, StepStatus.FAILED, message="condition expression required",
               timeline="step_condition_failed")
        return
    try:
        value = truthy(evaluate(expr, build_scope(tx.plan, tx.run, step.id)))
        if step.output_schema:
            validate_value(step.output_schema, value, where=f"step '{step.id}' output")
        elif step.output_schema_id.strip():
            validate_with_registry(tx.plan, step.output_schema_id.strip(), value,
                                   where=f"step '{step.id}' output")
    except CordtrioError as exc:
        finish(tx, step.id, sr, StepStatus.FAILED, message=str(exc),
               timeline="step_condition_failed")
        return
    sr.output = value
    record_inline_output(tx, step, value)
    tx.timeline("step_condition_evaluated", step_id=step.id, status="succeeded",
                data={"value": value})
    finish(tx, step.id, sr, StepStatus.SUCCEEDED, timeline=None)


def delay_seconds(step: Step, now: Any) -> float:
    """SPEC §3: ``delay_sec`` if > 0, else until ``delay_until``, else ``timeout_sec``."""
    if step.delay_sec < 0:
        raise ValueError(f"delay_sec must be non-negative, got {step.delay_sec}")
    if step.delay_sec > 0:
        return float(step.delay_sec)
    if step.delay_until.strip():
        target = parse_ts(step.delay_until.strip(), field="delay_until")
        assert target is not None
        return max(0.0, (target - now).total_seconds())
    if step.timeout_sec > 0:
        return float(step.timeout_sec)
    return 0.0


def _delay_start(tx: Tx, step: Step, sr: StepRun) -> bool:
    sr.started_at = tx.now
    try:
        seconds = delay_seconds(step, tx.now)
    except ValueError as exc:
        finish(tx, step.id, sr, StepStatus.FAILED, message=str(exc),
               timeline="step_delay_failed")
        return True
    if seconds <= 0:
        finish(tx, step.id, sr, StepStatus.SUCCEEDED, timeline="step_delay_completed")
        return True
    sr.status = StepStatus.RUNNING
    sr.next_attempt_at = tx.now + timedelta(seconds=seconds)
    tx.touch_step(step.id)
    tx.timeline("step_delay_started", step_id=step.id, status="running",
                data={"delay_ms": int(seconds * 1000)})
    tx.effects.append(ArmTimer(sr.next_attempt_at, TimerKind.WAKE, step.id))
    return False


def _delay_tick(tx: Tx, step: Step, sr: StepRun) -> bool:
    if sr.next_attempt_at is not None and sr.next_attempt_at > tx.now:
        return False
    finish(tx, step.id, sr, StepStatus.SUCCEEDED, timeline="step_delay_completed")
    return True


def _notify(tx: Tx, step: Step, sr: StepRun) -> bool:
    """Render the alert and ask the shell to publish it; the step completes when the
    shell reports the outcome (``AlertOutcome``)."""
    sr.started_at = tx.now
    try:
        rendered = render(step.input, build_scope(tx.plan, tx.run, step.id)) if step.input else {}
    except ExpressionError as exc:
        finish(tx, step.id, sr, StepStatus.FAILED, message=str(exc), timeline="step_event_failed")
        return True
    sr.status = StepStatus.RUNNING
    sr.input = rendered if isinstance(rendered, dict) else {}
    tx.touch_step(step.id)
    tx.effects.append(PublishAlert(step.id, build_alert(step, rendered)))
    return False


def build_alert(step: Step, rendered: Any) -> SystemAlert:
    fields = rendered if isinstance(rendered, dict) else {}

    def text(key: str) -> str:
        value = fields.get(key)
        return value.strip() if isinstance(value, str) else ""

    return SystemAlert(
        level=text("level").upper() or "INFO",
        message=text("message") or step.name or step.id,
        component=text("component") or SENDER_ID,
        code=text("code"),
    )
