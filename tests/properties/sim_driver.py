"""Properties of the pure core (SPEC §3–§7), checked over random workflows and random
interleavings of results, timers, approvals and cancellations.

A ``Simulation`` plays the Trio shell deterministically: it keeps the timers the core armed
(a min-heap), the jobs in flight, the alerts to acknowledge and the approvals waiting, and at
each step lets Hypothesis choose what happens next. Every run is driven until it is terminal
(or a budget is exhausted, or nothing can happen any more: a stuck run). Each property is a
check the simulation runs after every event; a failure shows the event trace.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_args

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from cordtrio.core.events import (
    AlertOutcome,
    Approve,
    ArmTimer,
    CancelJob,
    CancelRun,
    Dispatch,
    DispatchFailed,
    Effect,
    Event,
    LoadedOutput,
    PublishAlert,
    Recover,
    ResultReceived,
    Start,
    StepFinished,
    TimerFired,
    TimerKind,
)
from cordtrio.core.machine import Outcome, decide
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState
from cordtrio.errors import InvalidStateError, NotFoundError
from cordtrio.model import Step, StepRun, StepStatus, TimelineEvent, Workflow, WorkflowRun
from cordtrio.protocol import JobResult, JobStatus

T0 = datetime(2030, 1, 1, tzinfo=UTC)
BUDGET = 1000
"""Events per run before the simulation gives up (real runs need well under 300)."""

RUN_IDS = ("run-1", "org:7:run-2")  # the second one checks job ids split on the LAST ':'

FLAKINESS = (2, 0, 4, 6)
"""Failed results per ten, drawn once per run: some runs never fail, some fail a lot.
(Each result's roll shrinks to success, so a shrunk example fails only where it must.)"""

FAILURES = (JobStatus.FAILED, JobStatus.DENIED, JobStatus.TIMEOUT, JobStatus.CANCELLED)
_EFFECT_TYPES = get_args(Effect)  # the classes the engine's run task dispatches on

COMMON = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(n: int) -> int:
    """``n`` examples, times ``$CORDTRIO_PROPERTY_SCALE`` (default 1) for a longer hunt."""
    return max(1, int(n * float(os.environ.get("CORDTRIO_PROPERTY_SCALE", "1"))))


class StuckRun(AssertionError):
    """The run is not terminal but nothing can happen any more."""


# ------------------------------------------------------------------------------ driver

Check = Callable[["Simulation", "Fed", Outcome], None]


@dataclass(frozen=True)
class Fed:
    """One event fed to the core: what the driver did, when, and the run before it."""

    kind: str
    event: Event
    now: datetime
    before: dict[str, Any] | None


@dataclass
class Weights:
    """Relative odds of the driver's actions (when possible)."""

    result: int = 400
    timer: int = 200
    approve: int = 150
    alert: int = 150
    stale: int = 40
    dispatch_failed: int = 10
    reload: int = 10
    nudge: int = 5
    cancel: int = 3


@dataclass
class Simulation:
    """A deterministic stand-in for the Trio shell around ``decide``.

    ``data`` (Hypothesis' ``st.data()``) makes every choice; ``checks`` run after every
    event. ``log`` records exactly what was fed (for replay) and ``effect_log`` what came
    back.
    """

    wf: Workflow
    run_input: dict[str, Any]
    data: Any
    run_id: str = RUN_IDS[0]
    checks: list[Check] = field(default_factory=list)
    weights: Weights = field(default_factory=Weights)
    snapshot: bool = False  # record ``before`` for every event (not only stale/terminal)
    plan: Plan = field(init=False)
    state: RunState = field(init=False)
    now: datetime = T0
    timers: list[tuple[datetime, int, ArmTimer]] = field(default_factory=list)
    in_flight: dict[str, str] = field(default_factory=dict)  # job id → step/child id
    finished_jobs: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    dispatches: Counter[str] = field(default_factory=Counter)
    trace: list[str] = field(default_factory=list)
    log: list[Fed] = field(default_factory=list)
    effect_log: list[list[Effect]] = field(default_factory=list)
    row_log: list[list[TimelineEvent]] = field(default_factory=list)
    started: bool = False
    flakiness_choices: tuple[int, ...] = FLAKINESS
    flakiness: int = 0
    _seq: int = 0

    def __post_init__(self) -> None:
        self.plan = Plan.build(self.wf)
        self.state = RunState(new_run(self.wf, self.run_id, self.run_input))

    @property
    def run(self) -> WorkflowRun:
        return self.state.run

    # -- feeding events -------------------------------------------------------------

    def feed(self, kind: str, event: Event) -> Outcome | None:
        """Apply one event, absorb its effects, run the checks. None when the core
        (rightly) refused a command."""
        before = None
        if self.snapshot or kind == "stale" or self.run.status.is_terminal:
            before = self.run.to_dict()
        step = Fed(kind, event, self.now, before)
        try:
            out = decide(self.plan, self.state, event, self.now)
        except (NotFoundError, InvalidStateError) as exc:
            assert isinstance(event, Approve), f"{kind} {event!r} raised {exc!r}"
            self.note(step, f"refused: {exc}")
            if before is not None:
                assert self.run.to_dict() == before, "a refused command changed the run"
            return None
        if kind == "start":
            self.started = True
        self.log.append(step)
        self.effect_log.append(out.effects)
        self.row_log.append(out.rows)
        self._absorb(out.effects)
        self.note(step, _summarise(out.effects))
        for check in self.checks:
            check(self, step, out)
        self._check_jobs_agree()
        return out

    def _absorb(self, effects: list[Effect]) -> None:
        for eff in effects:
            # the engine tells effects apart by exact type: a subclass would be dropped
            assert type(eff) in _EFFECT_TYPES, f"effect of no Effect class: {eff!r}"
            match eff:
                case Dispatch(job_id=job_id, target_id=target, again=True):
                    # recovery publishes a running job again: the same attempt, in flight
                    assert self.in_flight.get(job_id) == target, (
                        f"{job_id} published again but not in flight")
                case Dispatch(job_id=job_id, target_id=target):
                    assert job_id not in self.in_flight, f"{job_id} dispatched twice"
                    self.in_flight[job_id] = target
                    self.dispatches[target] += 1
                case CancelJob(job_id=job_id):
                    if self.in_flight.pop(job_id, None) is not None:
                        self.finished_jobs.append(job_id)
                case ArmTimer():
                    self._seq += 1
                    heapq.heappush(self.timers, (eff.at, self._seq, eff))
                case PublishAlert(step_id=sid):
                    self.alerts.append(sid)
                case StepFinished():
                    pass

    def _check_jobs_agree(self) -> None:
        """The jobs the shell believes in flight are exactly the running jobs of the run
        (else results would be delivered for jobs the core forgot, or never delivered)."""
        running = {sr.job_id for _, sr in all_step_runs(self.run)
                   if sr.status == StepStatus.RUNNING and sr.job_id}
        assert running == set(self.in_flight), self.fail_text(
            f"running jobs {sorted(running)} != jobs in flight {sorted(self.in_flight)}"
        )

    def note(self, step: Fed, what: str) -> None:
        secs = int((step.now - T0).total_seconds())
        self.trace.append(
            f"{len(self.trace):3d} t+{secs:<5d} {step.kind:15s} {_describe(step.event)}"
            f" -> run {self.run.status.value}; {what}"
        )

    def fail_text(self, message: str) -> str:
        steps = ", ".join(
            f"{sid}={sr.status.value}"
            + (f"(attempts={sr.attempts})" if sr.attempts else "")
            + (f"[{' '.join(c.status.value[:4] for c in sr.children.values())}]"
               if sr.children else "")
            for sid, sr in self.run.steps.items()
        )
        return (
            f"{message}\nworkflow: {describe_workflow(self.wf)}\ninput: {self.run_input}\n"
            f"steps: {steps}\ntrace (last 40):\n" + "\n".join(self.trace[-40:])
        )

    # -- choosing what happens next -----------------------------------------------------

    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def waiting_approvals(self) -> list[str]:
        return [sid for sid in self.plan.order
                if (sr := self.run.steps.get(sid)) is not None
                and sr.status == StepStatus.WAITING]

    def run_to_end(self, budget: int = BUDGET) -> None:
        """Start the run and drive it until it is terminal; fail on a stuck run."""
        self.flakiness = self.draw(st.sampled_from(self.flakiness_choices), "flakiness")
        self.feed("start", Start())
        while not self.run.status.is_terminal:
            if len(self.log) >= budget:
                raise AssertionError(self.fail_text(f"not terminal after {budget} events"))
            self.act()

    def act(self) -> None:
        """One action of the shell, chosen by Hypothesis among those possible."""
        w = self.weights
        waiting = self.waiting_approvals()
        options: list[tuple[int, Callable[[], None]]] = []
        if self.in_flight:
            options.append((w.result, self.deliver_result))
        if waiting:
            options.append((w.approve, lambda: self.answer_approval(waiting)))
        if self.alerts:
            options.append((w.alert, self.answer_alert))
        if not options and all(t.kind == TimerKind.RUN_TIMEOUT for _, _, t in self.timers):
            # Only the workflow's timeout could still end it: the run itself is stuck.
            raise StuckRun(self.fail_text("stuck: not terminal, and nothing can happen"))
        if self.timers:
            options.append((w.timer, self.fire_timer))
        if w.stale:
            options.append((w.stale, self.deliver_stale))
        if self.in_flight and w.dispatch_failed:
            options.append((w.dispatch_failed, self.fail_dispatch))
        if w.reload:
            options.append((w.reload, self.reload))
        if w.nudge:
            options.append((w.nudge, lambda: self.feed("nudge", Start())))
        if w.cancel:
            options.append((w.cancel, lambda: self.feed("cancel", CancelRun())))
        pick = self.draw(st.integers(0, sum(weight for weight, _ in options) - 1), "action")
        for weight, action in options:
            if pick < weight:
                action()
                return
            pick -= weight

    def deliver_result(self) -> None:
        job_id = self.draw(st.sampled_from(list(self.in_flight)), "job")
        status = JobStatus.SUCCEEDED
        if self.draw(st.integers(0, 9), "roll") >= 10 - self.flakiness:
            status = self.draw(st.sampled_from(FAILURES), "failure")
        del self.in_flight[job_id]
        self.finished_jobs.append(job_id)
        self.feed("result", make_result(job_id, status))

    def deliver_stale(self) -> None:
        """A result no job in flight can claim: a duplicate, a late answer for a cancelled
        or timed-out attempt, or a forged/foreign/malformed job id."""
        pool = [j for j in (*self.finished_jobs[-6:], *self.forged_job_ids())
                if j not in self.in_flight]
        job_id = self.draw(st.sampled_from(pool), "stale job")
        status = self.draw(st.sampled_from(list(JobStatus)), "stale status")
        self.feed("stale", make_result(job_id, status))

    def forged_job_ids(self) -> list[str]:
        sid = self.plan.order[0]
        return ["", "no-colon", f"{self.run_id}:", f"other-run:{sid}@1",
                f"{self.run_id}:{sid}@99", f"{self.run_id}:{sid}", f"{self.run_id}:nope@1",
                f"{self.run_id}:{sid}[42]@1"]

    def fire_timer(self) -> None:
        at, _, timer = heapq.heappop(self.timers)
        self.now = max(self.now, at)
        self.feed("timer", TimerFired(timer.kind, timer.target, timer.job_id))

    def answer_approval(self, waiting: list[str]) -> None:
        sid = self.draw(st.sampled_from(waiting), "approval")
        approved = self.draw(st.integers(0, 5), "reject?") != 5
        self.feed("approve", Approve(sid, approved))

    def answer_alert(self) -> None:
        i = self.draw(st.integers(0, len(self.alerts) - 1), "alert")
        sid = self.alerts.pop(i)
        error = "alert bus down" if self.draw(st.integers(0, 9), "alert fails?") == 9 else ""
        self.feed("alert", AlertOutcome(sid, error))

    def fail_dispatch(self) -> None:
        job_id = self.draw(st.sampled_from(list(self.in_flight)), "job")
        target = self.in_flight.pop(job_id)
        self.finished_jobs.append(job_id)
        self.feed("dispatch_failed", DispatchFailed(target, job_id, "publish failed"))

    def reload(self) -> None:
        """The engine restarts: load the stored run (no derived indexes) and recover."""
        self.state = reloaded(self.state)
        self.plan = Plan.build(self.wf)
        self.feed("reload", Recover())


def new_run(wf: Workflow, run_id: str, run_input: dict[str, Any]) -> WorkflowRun:
    return WorkflowRun(id=run_id, workflow_id=wf.id, org_id=wf.org_id, team_id=wf.team_id,
                       input=dict(run_input), created_at=T0, updated_at=T0)


def reloaded(state: RunState) -> RunState:
    return RunState(WorkflowRun.from_dict(state.run.to_dict()))


def make_result(job_id: str, status: JobStatus) -> ResultReceived:
    if status == JobStatus.SUCCEEDED:
        return ResultReceived(
            JobResult(job_id=job_id, status=status, result_ptr=f"redis://res:{job_id}",
                      worker_id="w1"),
            LoadedOutput(value={"job": job_id}),
        )
    return ResultReceived(
        JobResult(job_id=job_id, status=status, worker_id="w1",
                  error_message=f"worker says {status.name.lower()}"),
    )


def all_step_runs(run: WorkflowRun) -> Iterator[tuple[str, StepRun]]:
    """(step id, StepRun) of every step and every for-each child (children: the parent's id)."""
    for sid, sr in run.steps.items():
        yield sid, sr
        for child in sr.children.values():
            yield sid, child


def handler_ids(wf: Workflow) -> set[str]:
    return {s.on_error for s in wf.steps.values() if s.on_error}


def max_attempts(step: Step) -> int:
    return (step.retry.max_retries if step.retry is not None else 0) + 1


def _describe(event: Event) -> str:
    match event:
        case ResultReceived(result=r):
            return f"{r.job_id!r} {r.status.name}"
        case TimerFired(kind=kind, target=target, job_id=job_id):
            return f"{kind.value} {target} {job_id}".rstrip()
        case Approve(step_id=sid, approved=ok):
            return f"{'approve' if ok else 'reject'} {sid}"
        case AlertOutcome(step_id=sid, error=error):
            return f"{sid} {'error' if error else 'ok'}"
        case DispatchFailed(job_id=job_id):
            return job_id
        case _:
            return type(event).__name__


def _summarise(effects: list[Effect]) -> str:
    parts = []
    for eff in effects:
        match eff:
            case Dispatch(job_id=job_id):
                parts.append(f"dispatch {job_id}")
            case CancelJob(job_id=job_id):
                parts.append(f"cancel {job_id}")
            case ArmTimer(at=at, kind=kind, target=target):
                parts.append(f"timer {kind.value} {target} t+{int((at - T0).total_seconds())}")
            case PublishAlert(step_id=sid):
                parts.append(f"alert {sid}")
            case StepFinished(step_id=sid, status=status):
                parts.append(f"{sid}:{status.value}")
    return ", ".join(parts) or "-"


def describe_workflow(wf: Workflow) -> str:
    out = []
    for sid, s in wf.steps.items():
        bits = [s.type.value]
        if s.for_each:
            bits.append(f"for_each(max_parallel={s.max_parallel})")
        if s.condition:
            bits.append(f"if {s.condition!r}")
        if s.depends_on:
            bits.append(f"after {','.join(s.depends_on)}")
        if s.retry is not None and s.retry.max_retries:
            bits.append(f"retries={s.retry.max_retries}")
        if s.timeout_sec:
            bits.append(f"timeout={s.timeout_sec:g}")
        if s.delay_sec:
            bits.append(f"delay={s.delay_sec:g}")
        if s.on_error:
            bits.append(f"on_error={s.on_error}")
        out.append(f"{sid}: {' '.join(bits)}")
    timeout = f" (timeout {wf.timeout_sec:g}s)" if wf.timeout_sec else ""
    return "{" + "; ".join(out) + "}" + timeout



# --------------------------------------------------------------------------- properties


def simulate(data: Any, wf: Workflow, run_input: dict[str, Any], *checks: Check,
             **options: Any) -> Simulation:
    run_id = data.draw(st.sampled_from(RUN_IDS), label="run id")
    sim = Simulation(wf, run_input, data, run_id=run_id, checks=list(checks), **options)
    sim.run_to_end()
    record_statistics(sim)
    return sim


def record_statistics(sim: Simulation) -> None:
    """What the run went through (``pytest --hypothesis-show-statistics``)."""
    event(f"run {sim.run.status.value}")
    event(f"events: {'<10' if len(sim.log) < 10 else '<50' if len(sim.log) < 50 else '50+'}")
    kinds = Counter(step.kind for step in sim.log)
    for kind in ("timer", "approve", "alert", "stale", "reload", "dispatch_failed"):
        if kinds[kind]:
            event(f"has {kind}")
    if any(sid in sim.run.steps for sid in handler_ids(sim.wf)):
        event("handler triggered")
    if any(n > 1 for n in sim.dispatches.values()):
        event("retried")
    if any(sr.children for sr in sim.run.steps.values()):
        event("fanned out")
