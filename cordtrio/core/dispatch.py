"""Turning a ready step (or for-each child) into a job (SPEC §5)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import CordtrioError, ExpressionError, NotFoundError, ValidationError
from ..expr import render
from ..model import NO_DATA, Step, StepRun, StepStatus, WorkflowRun
from ..payloads import CONTEXT_PREFIX, POINTER_SCHEME
from ..protocol import ActorType, Budget, JobMetadata, JobRequest
from ..schemas import validate_value
from .events import ArmTimer, Dispatch, TimerKind
from .finish import finish
from .plan import JobShape, Plan, job_shape
from .scope import NO_ITEM, build_scope
from .state import RunJobs, Tx, timeline_row

_ACTOR_TYPES = {"human": ActorType.HUMAN, "service": ActorType.SERVICE}
# Module constants: reading ``StepStatus.X`` costs ~90 ns on 3.11 (an enum descriptor).
_RUNNING = StepStatus.RUNNING
# ``json.dumps(item, default=str)`` builds a new encoder per call (~2 us): one, built once.
_ITEM_JSON = json.JSONEncoder(default=str)
_RUNNING_TEXT = str(StepStatus.RUNNING.value)
_new = object.__new__


def dispatch(
    tx: Tx, step: Step, sr: StepRun, *, parent: str = "", index: int = -1
) -> bool:
    """Dispatch the next attempt of ``sr``. Returns False when the step failed instead
    (bad input, schema violation); the failure is already recorded."""
    run = tx.run
    target = sr.step_id
    job_id = f"{run.id}:{target}@{sr.attempts + 1}"
    item = sr.item if parent else NO_ITEM
    try:
        # the scope only serves to render ``step.input``: not built for a step without one
        scope = build_scope(tx.plan, run, step.id, item) if step.input else {}
        payload = build_payload(tx.plan, run, step, scope, item)
    except CordtrioError as exc:
        finish(tx, step.id, sr, StepStatus.FAILED, parent=parent, message=str(exc))
        return False
    start_job(tx, step, sr, job_id, payload, parent, index)
    return True


def start_job(
    tx: Tx, step: Step, sr: StepRun, job_id: str, payload: dict[str, Any], parent: str = "",
    index: int = -1,
) -> None:
    """``dispatch`` once the payload is built: ``sr`` becomes the running attempt
    ``job_id``, and the job's timeline event, ``Dispatch`` and timer are emitted."""
    target = sr.step_id
    previous = sr.job_id
    sr.status = _RUNNING
    sr.started_at = tx.now
    sr.completed_at = None
    sr.next_attempt_at = None
    sr.attempts += 1
    sr.job_id = job_id
    sr.input = payload
    if parent:
        tx.touch_child(parent, target)
    else:
        tx.touch_step(target)
        started = tx.state.started  # (``RunState.started``) this attempt's, not the last's
        started.pop(previous, None)
        started[job_id] = sr
    emit_job(tx, job_shape(tx.plan, step), target, job_id, payload, parent, index, sr.item)


def emit_job(
    tx: Tx, shape: JobShape, target: str, job_id: str, payload: dict[str, Any],
    parent: str = "", index: int | str = -1, item: Any = None, *, again: bool = False,
) -> None:
    """The effects of starting ``job_id`` for ``target`` (a step, ``shape``'s, or with
    ``parent`` the for-each child ``index`` of ``item``): its timeline event, ``Dispatch``
    and timer. ``again``: the same attempt published once more (``redispatch``): its
    ``Dispatch`` alone.

    The job (SPEC §5) is built here, from what the run's jobs share (``RunJobs``) and what
    the step's share (``JobShape``), rather than by a function of its own: every job is
    started here, and one call less is a tenth of what this costs."""
    run = tx.run
    plan = tx.plan
    jobs = tx.state.jobs
    if jobs is None:
        jobs = tx.state.jobs = RunJobs.of(plan, run)
    if plan.has_payload_store:
        ctx_key = CONTEXT_PREFIX + job_id  # ``context_key()``
        pointer = POINTER_SCHEME + ctx_key
    else:
        ctx_key = pointer = ""
    wf_id = jobs.workflow_id
    env = jobs.env.copy()  # (a copy of a dict, then one key set in its place: the
    env["step_id"] = target  # fastest way to a new map of eight keys)
    if parent:
        env["foreach_index"] = str(index)
        env["foreach_item"] = _ITEM_JSON.encode(item)
    # Its fields set one by one rather than passed to ``__init__`` (fifteen arguments,
    # whose defaults it tests): half the cost; those of a plain job (``JobShape.plain``,
    # ``RunJobs.plain``: the common case), and then what any other says more.
    # tests/core/test_core_dispatch.py compares a request made here with
    # ``JobRequest(...)``'s, so a field added there shows here.
    request = _new(JobRequest)
    request.job_id = job_id
    request.topic = shape.topic
    request.priority = jobs.priority
    request.context_ptr = pointer
    request.adapter_id = shape.adapter_id
    request.env = env
    request.parent_job_id = ""
    request.workflow_id = wf_id
    request.step_index = 0
    request.memory_id = jobs.memory_id
    request.budget = None
    request.tenant_id = run.org_id
    request.principal_id = ""
    request.labels = {"workflow_id": wf_id, "run_id": run.id, "step_id": target}
    request.meta = None
    if not (shape.plain and jobs.plain):
        _say_more(request, run, shape, jobs.dry_run)
    # its ``Dispatch`` and ``step_dispatched`` row made the same way: a third less than
    # their ``__init__`` (tests/core/test_core_timeline.py compares such objects with
    # ``__init__``'s)
    order = _new(Dispatch)
    order.step_id = shape.step_id
    order.target_id = target
    order.job_id = job_id
    order.request = request
    order.payload = payload
    order.context_key = ctx_key
    order.again = again
    effects = tx.effects
    effects.append(order)
    if again:
        return
    data: dict[str, Any] = {"context_ptr": pointer} if pointer else NO_DATA
    if parent:
        data = {**data, "foreach_index": index}
    tx.rows.append(timeline_row(tx.now, "step_dispatched", run.id, run.workflow_id, target,
                                job_id, _RUNNING_TEXT, "", "", data))
    if shape.timer is not None:  # (a positive timeout)
        effects.append(ArmTimer(tx.now + shape.timer, TimerKind.STEP_TIMEOUT, target, job_id))


def _say_more(request: JobRequest, run: WorkflowRun, shape: JobShape, dry_run: bool
              ) -> None:
    """What the job ``request`` says beyond a plain job's (``emit_job``): more labels, a
    budget, its metadata and actor."""
    if shape.labels is not None:
        request.labels.update(shape.labels)
    if dry_run:
        request.labels["dry_run"] = "true"
    if shape.timed:
        request.budget = Budget(deadline_ms=shape.deadline_ms)
    if shape.has_meta or run.org_id:  # ``build_meta``'s own first test
        meta = request.meta = build_meta(run, shape.step)
        if meta is not None and meta.actor_id:
            request.principal_id = meta.actor_id


def redispatch(tx: Tx, step: Step, sr: StepRun, *, parent: str = "") -> None:
    """Publish the current attempt of a running job again, same job id and input (SPEC
    §12: after a restart, a job in flight may have died with the old engine). The bus
    ignores it if it still owns the job; a worker that runs it twice is at-least-once."""
    payload = sr.input if isinstance(sr.input, dict) else {}
    index = sr.step_id.rpartition("[")[2].rstrip("]") if parent else -1
    emit_job(tx, job_shape(tx.plan, step), sr.step_id, sr.job_id, payload, parent, index,
             sr.item, again=True)


def build_payload(
    plan: Plan, run: WorkflowRun, step: Step, scope: dict[str, Any], item: Any
) -> dict[str, Any]:
    """The job's input: ``step.input`` rendered (must be a map) or the run's input, plus
    ``item`` for a for-each child; validated against the step's input schema."""
    if step.input:
        try:
            rendered = render(step.input, scope)
        except ExpressionError as exc:
            raise ExpressionError(f"step '{step.id}' input: {exc}") from None
        if not isinstance(rendered, dict):
            raise ValidationError(
                f"step '{step.id}': step input must be object, got {type_name(rendered)}"
            )
        payload = rendered
    else:
        payload = dict(run.input)
    if item is not NO_ITEM:
        payload["item"] = item
    validate_input(plan, step, payload)
    return payload


def validate_input(plan: Plan, step: Step, payload: dict[str, Any]) -> None:
    if step.input_schema:
        validate_value(step.input_schema, payload, where=f"step '{step.id}' input")
    elif step.input_schema_id.strip():
        validate_with_registry(plan, step.input_schema_id.strip(), payload,
                               where=f"step '{step.id}' input")


def validate_with_registry(plan: Plan, schema_id: str, value: Any, *, where: str) -> None:
    """Validate against a registry schema the shell resolved into the plan."""
    if plan.schemas is None:
        raise ValidationError(f"{where}: schema registry unavailable")
    schema = plan.schemas.get(schema_id)
    if schema is None:
        raise NotFoundError(f"{where}: schema '{schema_id}' not found")
    validate_value(schema, value, where=f"{where} (schema '{schema_id}')")


def build_meta(run: WorkflowRun, step: Step) -> JobMetadata | None:
    """Step governance metadata for the job; None when there is nothing to say."""
    sm = step.meta
    if sm is None and not run.org_id.strip():
        return None  # the common case, without building two JobMetadata to compare
    meta = JobMetadata(tenant_id=run.org_id.strip())
    if sm is not None:
        meta.actor_id = sm.actor_id.strip()
        meta.actor_type = _ACTOR_TYPES.get(sm.actor_type.strip().lower(), ActorType.UNSPECIFIED)
        meta.idempotency_key = sm.idempotency_key.strip()
        meta.pack_id = sm.pack_id.strip()
        meta.capability = sm.capability.strip()
        meta.risk_tags = [t.strip() for t in sm.risk_tags if t.strip()]
        meta.requires = [t.strip() for t in sm.requires if t.strip()]
        meta.labels = dict(sm.labels)
    if meta == JobMetadata():
        return None
    return meta


def type_name(value: Any) -> str:
    """JSON-ish name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__
