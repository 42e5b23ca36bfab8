"""A small driver for the pure core: feed events to ``decide``, play the shell's part.

``Sim`` holds a plan, a run state and a wall clock. ``feed`` runs one ``decide`` call and
records what came out (timeline, dispatches, cancels, timers, alerts). ``advance`` plays the
shell's timers: every armed timer that falls due is fed back as ``TimerFired`` at its own
time, earliest first (stale timers included — the core must ignore those itself).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from cordtrio.core.events import (
    AlertOutcome,
    ArmTimer,
    CancelJob,
    Dispatch,
    Effect,
    Event,
    LoadedOutput,
    PublishAlert,
    ResultReceived,
    Start,
    StepFinished,
    TimerFired,
)
from cordtrio.core.machine import Outcome, decide
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState
from cordtrio.model import Step, StepRun, StepStatus, StepType, TimelineEvent, Workflow, WorkflowRun
from cordtrio.protocol import JobResult, JobStatus
from cordtrio.validation import validate_workflow

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_ID = "run-1"
WF_ID = "wf1"
ORG = "org1"
TEAM = "team1"
_EFFECT_TYPES = get_args(Effect)  # the classes the engine's run task dispatches on


def step(sid: str, **kw: Any) -> Step:
    """A step; worker-like steps get topic ``job.test`` unless a topic/worker_id is given."""
    kind = StepType(kw.get("type", StepType.WORKER))
    kw["type"] = kind
    if kind.is_worker_like and "topic" not in kw and "worker_id" not in kw:
        kw["topic"] = "job.test"
    return Step(id=sid, **kw)


def workflow(*steps: Step, validate: bool = True, **kw: Any) -> Workflow:
    """A workflow of ``steps`` in definition order (validated unless ``validate=False``)."""
    kw.setdefault("id", WF_ID)
    kw.setdefault("org_id", ORG)
    kw.setdefault("team_id", TEAM)
    wf = Workflow(steps={s.id: s for s in steps}, **kw)
    if validate:
        validate_workflow(wf)
    return wf


class Sim:
    def __init__(
        self,
        wf: Workflow,
        *,
        run: WorkflowRun | None = None,
        run_input: dict[str, Any] | None = None,
        schemas: dict[str, Any] | None = None,
        has_payload_store: bool = True,
        starts_reported: bool = False,
        now: datetime = T0,
        **run_fields: Any,
    ) -> None:
        self.plan = Plan.build(wf, schemas=schemas, has_payload_store=has_payload_store,
                               starts_reported=starts_reported)
        if run is None:
            run = WorkflowRun(
                id=RUN_ID, workflow_id=wf.id, org_id=wf.org_id, team_id=wf.team_id,
                input=run_input or {}, created_at=now, **run_fields,
            )
        self.state = RunState(run)
        self.now = now
        self.outcomes: list[Outcome] = []
        self.effects: list[Effect] = []
        self.timeline: list[TimelineEvent] = []
        self.dispatches: list[Dispatch] = []
        self.cancels: list[CancelJob] = []
        self.timers: list[ArmTimer] = []  # armed, not yet fired
        self.alerts: list[PublishAlert] = []  # published, not yet answered
        self.finished: list[StepFinished] = []

    # ------------------------------------------------------------------ state access

    @property
    def run(self) -> WorkflowRun:
        return self.state.run

    def sr(self, target: str) -> StepRun:
        """The StepRun of a step or of a for-each child (``step[3]``)."""
        if target.endswith("]") and "[" in target:
            parent = target[: target.rindex("[")]
            return self.run.steps[parent].children[target]
        return self.run.steps[target]

    def status(self, target: str) -> StepStatus | None:
        if "[" not in target and target not in self.run.steps:
            return None
        return self.sr(target).status

    def job(self, target: str) -> str:
        """The current job id of a step or child."""
        return self.sr(target).job_id

    def running_jobs(self) -> set[str]:
        """Job ids the core currently considers in flight (steps and children)."""
        jobs: set[str] = set()
        for sr in self.run.steps.values():
            for node in (sr, *sr.children.values()):
                if node.status == StepStatus.RUNNING and node.job_id:
                    jobs.add(node.job_id)
        return jobs

    def dispatched(self) -> list[str]:
        return [d.job_id for d in self.dispatches]

    def types(self) -> list[str]:
        return [e.type for e in self.timeline]

    def events(self, type_: str, step_id: str | None = None) -> list[TimelineEvent]:
        return [e for e in self.timeline
                if e.type == type_ and (step_id is None or e.step_id == step_id)]

    # ------------------------------------------------------------------------ driving

    def feed(self, event: Event) -> Outcome:
        out = decide(self.plan, self.state, event, self.now)
        self.outcomes.append(out)
        self.effects.extend(out.effects)
        for row in out.rows:  # the run task hands them to the write as they are
            assert type(row) is TimelineEvent, f"timeline row of another class: {row!r}"
        self.timeline.extend(out.rows)
        for eff in out.effects:
            # the engine tells effects apart by exact type: a subclass would be dropped
            assert type(eff) in _EFFECT_TYPES, f"effect of no Effect class: {eff!r}"
            match eff:
                case Dispatch():
                    self.dispatches.append(eff)
                case CancelJob():
                    self.cancels.append(eff)
                case ArmTimer():
                    self.timers.append(eff)
                case PublishAlert():
                    self.alerts.append(eff)
                case StepFinished():
                    self.finished.append(eff)
        return out

    def start(self) -> Outcome:
        return self.feed(Start())

    def result(
        self, job_id: str, status: JobStatus, *, message: str = "", result_ptr: str = "",
        output: LoadedOutput | None = None,
    ) -> Outcome:
        res = JobResult(job_id=job_id, status=status, result_ptr=result_ptr,
                        error_message=message)
        return self.feed(ResultReceived(res, output))

    def succeed(self, job_id: str, output: Any = None, *, too_large: bool = False) -> Outcome:
        """A SUCCEEDED result with pointer ``redis://res:<job>``; ``output`` is the decoded
        payload the shell loaded (None: no output loaded)."""
        loaded = LoadedOutput(value=output, too_large=too_large) if (
            output is not None or too_large) else None
        return self.result(job_id, JobStatus.SUCCEEDED, result_ptr=f"redis://res:{job_id}",
                           output=loaded)

    def fail(self, job_id: str, msg: str = "boom", status: JobStatus = JobStatus.FAILED
             ) -> Outcome:
        return self.result(job_id, status, message=msg)

    def advance(self, seconds: float) -> list[Outcome]:
        """Move the clock; fire every armed timer that falls due, earliest first, each at
        its own time (timers armed meanwhile fire too if they fall due)."""
        end = self.now + timedelta(seconds=seconds)
        outs: list[Outcome] = []
        while True:
            due = [t for t in self.timers if t.at <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.at)
            self.timers.remove(timer)
            self.now = max(self.now, timer.at)
            outs.append(self.feed(TimerFired(timer.kind, timer.target, timer.job_id)))
        self.now = end
        return outs

    def answer_alerts(self, error: str = "") -> list[Outcome]:
        """Report every pending alert as published (or failed with ``error``)."""
        alerts, self.alerts = self.alerts, []
        return [self.feed(AlertOutcome(a.step_id, error)) for a in alerts]
