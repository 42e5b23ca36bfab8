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
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import run_inputs, workflows

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
    RecordTimeline,
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
from cordtrio.core.status import compute_run_status
from cordtrio.errors import InvalidStateError, NotFoundError
from cordtrio.model import RunStatus, Step, StepRun, StepStatus, Workflow, WorkflowRun
from cordtrio.protocol import JobResult, JobStatus

T0 = datetime(2030, 1, 1, tzinfo=UTC)
BUDGET = 1000
"""Events per run before the simulation gives up (real runs need well under 300)."""

RUN_IDS = ("run-1", "org:7:run-2")  # the second one checks job ids split on the LAST ':'

FLAKINESS = (2, 0, 4, 6)
"""Failed results per ten, drawn once per run: some runs never fail, some fail a lot.
(Each result's roll shrinks to success, so a shrunk example fails only where it must.)"""

FAILURES = (JobStatus.FAILED, JobStatus.DENIED, JobStatus.TIMEOUT, JobStatus.CANCELLED)

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
        self._absorb(out.effects)
        self.note(step, _summarise(out.effects))
        for check in self.checks:
            check(self, step, out)
        self._check_jobs_agree()
        return out

    def _absorb(self, effects: list[Effect]) -> None:
        for eff in effects:
            match eff:
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
                case RecordTimeline() | StepFinished():
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


# ----------------------------------------------------------------- SPEC §7, independently


def spec_run_status(wf: Workflow, run: WorkflowRun) -> RunStatus:
    """SPEC §7 written from the text (not from ``cordtrio.core.status``).

    Counted steps: every step except an untriggered ``on_error`` handler (a handler is
    triggered once it has a StepRun). While a triggered handler is not terminal after a
    failure, the run is running. Then: failed/cancelled → failed; timed_out → timed_out;
    waiting → waiting; all succeeded → succeeded; else running.
    """
    handlers = handler_ids(wf)
    counted: list[StepStatus] = []
    handler_active = False
    for sid in wf.steps:
        sr = run.steps.get(sid)
        if sid in handlers:
            if sr is None:
                continue
            handler_active = handler_active or not sr.status.is_terminal
        counted.append(sr.status if sr is not None else StepStatus.PENDING)
    bad = {StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT}
    if handler_active and bad.intersection(counted):
        return RunStatus.RUNNING
    if StepStatus.FAILED in counted or StepStatus.CANCELLED in counted:
        return RunStatus.FAILED
    if StepStatus.TIMED_OUT in counted:
        return RunStatus.TIMED_OUT
    if StepStatus.WAITING in counted:
        return RunStatus.WAITING
    if all(s == StepStatus.SUCCEEDED for s in counted):
        return RunStatus.SUCCEEDED
    return RunStatus.RUNNING


# ------------------------------------------------------------------------------ checks


def check_max_parallel(sim: Simulation, step: Fed, out: Outcome) -> None:
    for sid, sr in sim.run.steps.items():
        limit = sim.wf.steps[sid].max_parallel
        if limit > 0 and sr.children:
            running = [c.step_id for c in sr.children.values()
                       if c.status == StepStatus.RUNNING]
            assert len(running) <= limit, sim.fail_text(
                f"{sid}: {len(running)} children running {running} > max_parallel {limit}"
            )


def check_attempts(sim: Simulation, step: Fed, out: Outcome) -> None:
    for sid, sr in all_step_runs(sim.run):
        limit = max_attempts(sim.wf.steps[sid])
        assert sr.attempts <= limit, sim.fail_text(
            f"{sr.step_id}: attempts {sr.attempts} > max_retries + 1 = {limit}"
        )
        assert sim.dispatches[sr.step_id] <= limit, sim.fail_text(
            f"{sr.step_id}: dispatched {sim.dispatches[sr.step_id]} times > {limit}"
        )


def check_status_rule(sim: Simulation, step: Fed, out: Outcome) -> None:
    run = sim.run
    if run.status in (RunStatus.CANCELLED, RunStatus.TIMED_OUT):
        return
    if run.status == RunStatus.PENDING:
        assert not sim.started, sim.fail_text("run pending after Start")
        return
    core = compute_run_status(sim.plan, run)
    spec = spec_run_status(sim.wf, run)
    assert run.status == core == spec, sim.fail_text(
        f"run status {run.status.value}, compute_run_status {core.value}, "
        f"SPEC §7 {spec.value}"
    )
    if run.status.is_terminal:
        assert run.completed_at is not None, sim.fail_text("terminal run without completed_at")


def check_failure_waits_for_handler(sim: Simulation, step: Fed, out: Outcome) -> None:
    """SPEC §7: after a failure the run stays running until a triggered handler is
    terminal. So when an event ends the run failed/timed out (other than a cancel or the
    workflow timeout), no triggered handler may have been cut short: a handler that the run's
    end cancelled (no ``StepFinished`` of its own) was still working."""
    assert step.before is not None
    run = sim.run
    ended = run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT) and step.before["status"] in (
        RunStatus.RUNNING.value, RunStatus.WAITING.value
    )
    if not ended or isinstance(step.event, CancelRun) or (
        isinstance(step.event, TimerFired) and step.event.kind == TimerKind.RUN_TIMEOUT
    ):
        return
    finished = {e.step_id for e in out.effects if isinstance(e, StepFinished)}
    for sid in handler_ids(sim.wf):
        sr = run.steps.get(sid)
        stored = step.before["steps"].get(sid)
        was = StepStatus(stored["status"]) if stored else StepStatus.PENDING  # absent: new
        if (sr is not None and sr.status == StepStatus.CANCELLED and sid not in finished
                and not was.is_terminal):
            raise AssertionError(sim.fail_text(
                f"run ended {run.status.value} while its triggered handler {sid} was still "
                f"{was.value if stored else 'just triggered'}; the handler was cancelled"
            ))


def check_dependencies(sim: Simulation, step: Fed, out: Outcome) -> None:
    """A non-handler step exists in the run only once all its ``depends_on`` succeeded; a
    handler only once a step naming it in ``on_error`` failed or timed out."""
    run, wf = sim.run, sim.wf
    handlers = handler_ids(wf)
    started = {e.step_id for e in out.effects if isinstance(e, Dispatch)}
    for sid in {*run.steps, *started}:
        sr = run.steps.get(sid)
        assert sr is not None, sim.fail_text(f"{sid} dispatched without a StepRun")
        if sid in handlers:
            sources = [s.id for s in wf.steps.values() if s.on_error == sid]
            assert any(
                (src := run.steps.get(s)) is not None
                and src.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
                for s in sources
            ), sim.fail_text(f"handler {sid} started but none of {sources} failed")
            continue
        for dep in wf.steps[sid].depends_on:
            dep_run = run.steps.get(dep)
            assert dep_run is not None and dep_run.status == StepStatus.SUCCEEDED, (
                sim.fail_text(
                    f"{sid} started ({sr.status.value}) but its dependency {dep} is "
                    f"{dep_run.status.value if dep_run else 'absent'}"
                )
            )


def check_stale_is_noop(sim: Simulation, step: Fed, out: Outcome) -> None:
    if step.kind != "stale":
        return
    assert not out.effects, sim.fail_text(f"stale result gave effects {out.effects!r}")
    assert not out.changes, sim.fail_text(f"stale result changed {out.changes!r}")
    assert sim.run.to_dict() == step.before, sim.fail_text("stale result changed the run")


def redeliver_results(sim: Simulation, step: Fed, out: Outcome) -> None:
    """Every result is delivered twice: the second copy is a duplicate (checked as stale)."""
    if step.kind == "result":
        sim.feed("stale", step.event)


def check_reload_equivalent(sim: Simulation, step: Fed, out: Outcome) -> None:
    """Deciding the same event on the *stored* form of the run (derived indexes rebuilt
    from scratch) gives the same effects and the same run."""
    assert step.before is not None
    fresh = RunState(WorkflowRun.from_dict(step.before))
    other = decide(Plan.build(sim.wf), fresh, step.event, step.now)
    assert repr(other.effects) == repr(out.effects), sim.fail_text(
        f"reloaded state gave effects\n  {_summarise(other.effects)}\nlive state gave\n"
        f"  {_summarise(out.effects)}"
    )
    assert fresh.run.to_dict() == sim.run.to_dict(), sim.fail_text(
        "reloaded state ended in a different run"
    )


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


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(kinds=("worker", "for_each", "gated")), run_input=run_inputs(),
       data=st.data())
def test_max_parallel_is_never_exceeded(wf: Workflow, run_input: dict[str, Any],
                                        data: Any) -> None:
    """SPEC §4: after every event, a for-each parent has at most ``max_parallel`` running
    children (when > 0), counting retries."""
    simulate(data, wf, run_input, check_max_parallel)


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_attempts_never_exceed_max_retries_plus_one(wf: Workflow, run_input: dict[str, Any],
                                                    data: Any) -> None:
    """SPEC §6: no step or child is attempted (or dispatched) more than
    ``max_retries + 1`` times. Runs here fail often, so retries are exercised."""
    simulate(data, wf, run_input, check_attempts, flakiness_choices=(6, 4, 8))


@settings(COMMON, max_examples=examples(120))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_a_terminal_run_never_changes(wf: Workflow, run_input: dict[str, Any],
                                      data: Any) -> None:
    """SPEC §3/§6/§9: once terminal, nothing touches the run: late results, timers,
    alerts, dispatch failures, cancel, start and recover give no effects and no change;
    approvals are refused."""
    sim = simulate(data, wf, run_input)
    frozen = sim.run.to_dict()
    step_ids = [*sim.plan.order, "no-such-step"]
    job_ids = [*sim.finished_jobs[-8:], *sim.forged_job_ids()]
    pending_timers = [t for _, _, t in sorted(sim.timers)]
    events = st.one_of(
        st.builds(make_result, st.sampled_from(job_ids), st.sampled_from(list(JobStatus))),
        st.builds(TimerFired, st.sampled_from(list(TimerKind)), st.sampled_from(step_ids),
                  st.sampled_from(job_ids)),
        st.builds(Approve, st.sampled_from(step_ids), st.booleans()),
        st.builds(AlertOutcome, st.sampled_from(step_ids), st.sampled_from(["", "boom"])),
        st.builds(DispatchFailed, st.sampled_from(step_ids), st.sampled_from(job_ids),
                  st.just("publish failed")),
        st.sampled_from([CancelRun(), Start(), Recover()]),
        *([st.builds(lambda t: TimerFired(t.kind, t.target, t.job_id),
                     st.sampled_from(pending_timers))] if pending_timers else []),
    )
    for late in data.draw(st.lists(events, min_size=1, max_size=12), label="after the end"):
        sim.now += timedelta(hours=1)
        out = sim.feed("after end", late)
        if out is not None:
            assert not out.effects, sim.fail_text(f"terminal run gave effects {out.effects!r}")
            assert not out.changes, sim.fail_text(f"terminal run changed {out.changes!r}")
        assert sim.run.to_dict() == frozen, sim.fail_text(f"terminal run changed by {late!r}")


@settings(COMMON, max_examples=examples(250))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_every_run_reaches_a_terminal_status(wf: Workflow, run_input: dict[str, Any],
                                             data: Any) -> None:
    """Liveness: answered results, fired timers, answered approvals and alerts always
    bring a run to a terminal status (never cancelled here), with nothing left running."""
    sim = simulate(data, wf, run_input, weights=Weights(cancel=0))
    run = sim.run
    assert run.status.is_terminal and run.completed_at is not None
    live = [sr.step_id for _, sr in all_step_runs(run) if not sr.status.is_terminal]
    assert not live, sim.fail_text(f"terminal run with live steps {live}")
    assert not sim.in_flight, sim.fail_text(f"terminal run with jobs in flight {sim.in_flight}")


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_run_status_follows_spec_rule(wf: Workflow, run_input: dict[str, Any],
                                      data: Any) -> None:
    """SPEC §7: after every event the run's status is what the rule says, both by
    ``compute_run_status`` and by an independent reading of the text; a failure never ends
    the run while a triggered handler is still working."""
    sim = Simulation(wf, run_input, data, checks=[check_status_rule,
                                                  check_failure_waits_for_handler],
                     snapshot=True)
    check_status_rule(sim, Fed("created", Start(), T0, None), Outcome())
    sim.run_to_end()


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_no_step_starts_before_its_dependencies_succeeded(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    """SPEC §3: no step starts (or is dispatched) before all its ``depends_on`` succeeded;
    an ``on_error`` handler starts only once a step naming it failed (SPEC §7)."""
    simulate(data, wf, run_input, check_dependencies)


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_stale_and_duplicate_results_change_nothing(wf: Workflow, run_input: dict[str, Any],
                                                    data: Any) -> None:
    """SPEC §6: a result for an attempt that is not the current running one (duplicates,
    late answers to cancelled or timed-out jobs, foreign or malformed ids) is ignored: no
    effects, no change. Every real result is also delivered twice."""
    simulate(data, wf, run_input, check_stale_is_noop, redeliver_results,
             weights=Weights(stale=300, cancel=1))


@settings(COMMON, max_examples=examples(120))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_same_events_give_same_effects(wf: Workflow, run_input: dict[str, Any],
                                       data: Any) -> None:
    """SPEC §12: ``decide`` is a pure function: replaying the same events at the same times
    on a fresh copy of the workflow and run gives the same effects and the same run."""
    sim = simulate(data, wf, run_input)
    plan = Plan.build(workflow_copy(wf))
    state = RunState(new_run(wf, sim.run_id, run_input))
    for i, (step, effects) in enumerate(zip(sim.log, sim.effect_log, strict=True)):
        if step.kind == "reload":
            state = reloaded(state)
        again = decide(plan, state, step.event, step.now)
        assert repr(again.effects) == repr(effects), sim.fail_text(
            f"event {i} ({step.kind} {_describe(step.event)}) gave different effects:\n"
            f"  first:  {_summarise(effects)}\n  second: {_summarise(again.effects)}"
        )
    assert state.run.to_dict() == sim.run.to_dict()


@settings(COMMON, max_examples=examples(80))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_stored_form_decides_like_the_live_state(wf: Workflow, run_input: dict[str, Any],
                                                 data: Any) -> None:
    """The fan-out indexes are derived data: deciding each event on the run as stored
    (``to_dict``/``from_dict``, indexes rebuilt lazily) gives the same effects and run as
    deciding it on the live state."""
    simulate(data, wf, run_input, check_reload_equivalent, snapshot=True)


def workflow_copy(wf: Workflow) -> Workflow:
    return Workflow.from_dict(wf.to_dict())
