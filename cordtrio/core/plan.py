"""A workflow compiled for execution: the facts every decision needs, computed once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..model import Step, StepStatus, StepType, Workflow
from .events import StepFinished

MAX_INLINE_OUTPUT_BYTES = 256 * 1024
"""Outputs up to this size are copied into ``context.steps``; larger ones keep the pointer."""

SENDER_ID = "workflow-engine"


@dataclass(frozen=True, slots=True)
class JobShape:
    """What every job of a step says alike, whatever its run or attempt (SPEC §5), as
    ``dispatch.emit_job`` reads it: found once per workflow (``Plan.shapes``) rather than
    tested and looked up on every job."""

    step: Step
    step_id: str
    topic: str
    """``step.topic``, or the workflow's default topic."""
    adapter_id: str
    """``step.worker_id``."""
    labels: Mapping[str, str] | None
    """The job's labels beyond ``workflow_id``, ``run_id`` and ``step_id``, in the order
    they are set (``worker_id``, then ``route_labels``); None: none."""
    timed: bool
    """The step has a timeout (``timeout_sec > 0``): its jobs carry a ``Budget``, even one
    whose deadline rounds to 0 ms."""
    deadline_ms: int
    """That ``Budget``'s deadline."""
    timer: timedelta | None
    """The step's timeout when it is armed at the dispatch (not when workers report their
    starts: it counts from there); None: no timer (a timeout too short to be told from
    zero is still a timer: ``timedelta(0)``)."""
    has_meta: bool
    """``step.meta`` is set (``build_meta`` may then have something to say without a
    tenant)."""
    plain: bool
    """Neither ``labels`` nor ``has_meta`` nor ``timed``: with ``RunJobs.plain``, a job
    has only the three labels, no budget and no metadata."""

    @classmethod
    def of(cls, workflow_id: str, step: Step, starts_reported: bool) -> JobShape:
        labels: dict[str, str] = {}
        if step.worker_id:
            labels["worker_id"] = step.worker_id
        if step.route_labels:
            labels.update(step.route_labels)
        timeout = step.timeout_sec
        timed = timeout > 0
        return cls(
            step=step,
            step_id=step.id,
            topic=step.topic or f"job.workflow.{workflow_id}",
            adapter_id=step.worker_id,
            labels=labels or None,
            timed=timed,
            deadline_ms=int(timeout * 1000) if timed else 0,
            timer=timedelta(seconds=float(timeout)) if timed and not starts_reported else None,
            has_meta=step.meta is not None,
            plain=not labels and step.meta is None and not timed,
        )


@dataclass(frozen=True, slots=True)
class PlainJob:
    """A step of ``Plan.plain_jobs`` as the short ways (``core.quick``) read it: what they
    would otherwise look up or test on every result, found once per workflow."""

    step: Step
    position: int
    """Its index in ``Plan.order``."""
    dependents: tuple[str, ...]
    """``Plan.dependents``: the steps that depend on it."""
    result_quick: bool
    """A result of it may take the short way: its dependents are all plain jobs, its
    output is not validated, and its id has no ``:`` (its job id then splits at its last
    ``:`` as ``parse_job_id`` splits it)."""
    copies_input: bool
    """No ``input`` and no input schema: its job's input is a copy of the run's, which
    cannot fail to build."""
    sole_dependency: str
    """Its only dependency; "" when it has none or several."""
    writes_path: bool
    """It has an ``output_path`` (its output is also written there)."""
    dependents_copy_input: bool
    """Its dependents are all plain jobs that ``copies_input``: starting them cannot fail
    (``quick._start_plain`` then starts them in one pass)."""
    succeeded: StepFinished
    """The ``StepFinished`` of its success, made once for every run's (an effect is a
    value nothing changes once it is built)."""
    shape: JobShape
    """``Plan.shapes``' (what its jobs say alike)."""


@dataclass(frozen=True)
class Plan:
    """A workflow plus what the engine knows about its environment.

    ``order`` is definition order (the ready pass follows it); ``handlers`` are the steps named
    by some ``on_error`` (never started on their own); ``schemas`` holds the registry
    schemas the workflow refers to, resolved by the shell (``None``: no registry).
    """

    workflow: Workflow
    order: tuple[str, ...]
    handlers: frozenset[str]
    handler_sources: Mapping[str, tuple[str, ...]]
    schemas: Mapping[str, dict[str, Any] | None] | None = None
    has_payload_store: bool = True
    starts_reported: bool = False
    """Workers report when a job starts (``JobStarted``, over a bus with job queues): a
    step's ``timeout_sec`` counts from there, not from the dispatch (SPEC §6, §13)."""
    resend_after: float = 0.0
    """Seconds after which a job still without a result is published again, same job id,
    and again at that interval (0: never). Only over a bus with job queues, which ignores
    a job it still owns: what goes out again is a job whose result was lost (SPEC §13)."""
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rechecks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Per step: its index in ``order``, then its dependents' indexes: the steps whose
    readiness may change when it does (see ``frontier.Frontier``)."""
    roots: tuple[int, ...] = ()
    """Positions of the steps a new run starts with: no dependency, not a handler."""
    plain_jobs: frozenset[str] = frozenset()
    """Steps that are nothing but a job: worker-like, no ``condition``, no ``for_each``,
    not an ``on_error`` handler, an id that is not a for-each child's. A result of one, and
    the start of one, take the short way (``core.quick``)."""
    checked_outputs: frozenset[str] = frozenset()
    """Steps whose output is validated (an ``output_schema`` or ``output_schema_id``): a
    result of one takes the general way (``core.quick``, once per result)."""
    plain: Mapping[str, PlainJob] = field(default_factory=dict)
    """``plain_jobs``, each with what the short ways read of it."""
    plain_roots: tuple[str, ...] = ()
    """The ids of ``roots`` when they are all plain jobs (a new run's start takes the short
    way, ``core.quick``), else none."""
    plain_roots_copy_input: bool = False
    """``plain_roots`` all ``copies_input`` (``PlainJob.dependents_copy_input``, for a new
    run's first steps)."""
    sinks: tuple[str, ...] | None = None
    """The steps nothing depends on, but ``on_error`` handlers, in definition order: the
    run's output is theirs (None: not worked out, ``status`` finds them)."""
    shapes: Mapping[str, JobShape] = field(default_factory=dict)
    """Per step, what its jobs say alike (``job_shape`` reads it, or works it out for a
    plan made without)."""

    @classmethod
    def build(
        cls,
        workflow: Workflow,
        *,
        schemas: Mapping[str, dict[str, Any] | None] | None = None,
        has_payload_store: bool = True,
        starts_reported: bool = False,
        resend_after: float = 0.0,
    ) -> Plan:
        order = tuple(workflow.steps)
        sources: dict[str, list[str]] = {}
        dependents: dict[str, list[str]] = {}
        for sid in order:
            step = workflow.steps[sid]
            if step.on_error and step.on_error in workflow.steps and step.on_error != sid:
                sources.setdefault(step.on_error, []).append(sid)
            for dep in dict.fromkeys(step.depends_on):  # a dependency named twice counts once
                dependents.setdefault(dep, []).append(sid)
        shapes = _shapes(workflow, starts_reported)
        plain_jobs = frozenset(
            sid for sid, step in workflow.steps.items()
            if isinstance(step.type, StepType) and step.type.is_worker_like
            and not step.condition and not step.for_each and sid not in sources
            and not (sid.endswith("]") and "[" in sid)  # could read as a child's id
            and sid in shapes
        )
        roots = tuple(i for i, sid in enumerate(order)
                      if not workflow.steps[sid].depends_on and sid not in sources)
        checked_outputs = frozenset(
            sid for sid, step in workflow.steps.items()
            if step.output_schema or step.output_schema_id.strip())
        plain = _plain(workflow, order, plain_jobs, checked_outputs, dependents, shapes)
        plain_roots = tuple(order[i] for i in roots) if all(
            order[i] in plain_jobs for i in roots) else ()
        return cls(
            workflow=workflow,
            order=order,
            handlers=frozenset(sources),
            handler_sources={h: tuple(s) for h, s in sources.items()},
            schemas=schemas,
            has_payload_store=has_payload_store,
            starts_reported=starts_reported,
            resend_after=resend_after,
            dependents={d: tuple(s) for d, s in dependents.items()},
            rechecks=_rechecks(order, dependents),
            roots=roots,
            plain_jobs=plain_jobs,
            checked_outputs=checked_outputs,
            plain=plain,
            plain_roots=plain_roots,
            plain_roots_copy_input=all(plain[sid].copies_input for sid in plain_roots),
            sinks=tuple(sid for sid in order if sid not in dependents and sid not in sources),
            shapes=shapes,
        )

    def schema_ids(self) -> set[str]:
        """Registry schema ids the workflow's steps refer to."""
        ids: set[str] = set()
        for step in self.workflow.steps.values():
            for sid in (step.input_schema_id.strip(), step.output_schema_id.strip()):
                if sid:
                    ids.add(sid)
        return ids


def _shapes(workflow: Workflow, starts_reported: bool) -> dict[str, JobShape]:
    """``Plan.shapes``: of the steps that run as jobs. A step whose fields cannot make one
    (a definition built without validation) has none: ``job_shape`` then fails where its
    job is made, as the step's own failure, not the whole plan's."""
    shapes: dict[str, JobShape] = {}
    for sid, step in workflow.steps.items():
        if isinstance(step.type, StepType) and step.type.is_worker_like:
            try:
                shapes[sid] = JobShape.of(workflow.id, step, starts_reported)
            except (TypeError, ValueError, AttributeError, OverflowError):
                continue
    return shapes


def _plain(
    workflow: Workflow, order: tuple[str, ...], plain_jobs: frozenset[str],
    checked_outputs: frozenset[str], dependents: Mapping[str, list[str]],
    shapes: Mapping[str, JobShape],
) -> dict[str, PlainJob]:
    """``Plan.plain``."""
    out: dict[str, PlainJob] = {}
    for i, sid in enumerate(order):
        if sid not in plain_jobs:
            continue
        step = workflow.steps[sid]
        after = tuple(dependents.get(sid, ()))
        deps = tuple(dict.fromkeys(step.depends_on))
        out[sid] = PlainJob(
            step=step,
            position=i,
            dependents=after,
            result_quick=(sid not in checked_outputs and ":" not in sid
                          and all(d in plain_jobs for d in after)),
            copies_input=_copies_input(step),
            sole_dependency=deps[0] if len(deps) == 1 else "",
            writes_path=bool(step.output_path.strip()),
            dependents_copy_input=all(
                d in plain_jobs and _copies_input(workflow.steps[d]) for d in after),
            succeeded=StepFinished(sid, StepStatus.SUCCEEDED),
            shape=shapes[sid],
        )
    return out


def job_shape(plan: Plan, step: Step) -> JobShape:
    """``plan.shapes``' for ``step``, or worked out now (a plan made without, a step that
    is not the workflow's)."""
    shape = plan.shapes.get(step.id)
    if shape is None or shape.step is not step:
        shape = JobShape.of(plan.workflow.id, step, plan.starts_reported)
    return shape


def _copies_input(step: Step) -> bool:
    """``PlainJob.copies_input``."""
    return not (step.input or step.input_schema or step.input_schema_id)


def _rechecks(
    order: tuple[str, ...], dependents: Mapping[str, list[str]]
) -> dict[str, tuple[int, ...]]:
    """``Plan.rechecks``: each step's position, then its dependents' positions."""
    position = {sid: i for i, sid in enumerate(order)}
    return {
        sid: (i, *(position[d] for d in dependents.get(sid, ())))
        for sid, i in position.items()
    }
