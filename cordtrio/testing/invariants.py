"""The invariants a simulation checks, on every event it observes and at the end.

``Invariants`` knows the workflows and keeps what it needs to judge the next event: a
light ``RunView`` of each run's last stored state, the first terminal snapshot of each run,
and the job ids sent per step. Every check reports a violation through ``fail(invariant,
detail)``; the caller decides what to do (the simulation stops at the first one).

``dependencies``
    No step is dispatched (or even started) before all its ``depends_on`` succeeded; an
    ``on_error`` handler only after a step naming it failed.
``attempts``
    No step or for-each child is attempted more than ``max_retries + 1`` times (stored
    ``attempts``, the ``@n`` of job ids, and distinct job ids sent).
``max_parallel``
    A for-each parent never has more than ``max_parallel`` children running, at any write.
``terminal_stable``
    A run, once stored terminal, never changes again.
``liveness``
    Every accepted run is terminal within ``bound`` virtual seconds after faults stop.
``lost_run``
    Every run whose ``submit`` returned is in the store.
``timeline``
    Each StepRun's final status agrees with the last ``step_*`` timeline event of that step,
    and the run's status with its last ``run_status`` event.
``single_owner``
    Over a store with run leases, each run is driven by one engine at a time: an engine
    writes a run's state, or dispatches its jobs, only while it holds the run's lease (as
    the lease calls the simulation saw say: acquired or renewed, not expired, not released).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import RunStatus, StepStatus, TimelineEvent, Workflow, WorkflowRun
from .trace import all_step_runs, violation_detail

__all__ = ["INVARIANTS", "Invariants", "RunView"]

INVARIANTS = (
    "dependencies", "attempts", "max_parallel", "terminal_stable", "liveness", "lost_run",
    "timeline", "single_owner",
)

Fail = Callable[[str, str], None]
"""``fail(invariant, detail)``."""


@dataclass(frozen=True, slots=True)
class RunView:
    """What the simulation remembers of a run's last stored state: cheap to take at every
    write (a deep copy of the run at every write cost a third of a simulation's time)."""

    id: str
    workflow_id: str
    status: RunStatus
    steps: dict[str, StepStatus]

    @classmethod
    def of(cls, run: WorkflowRun) -> RunView:
        return cls(run.id, run.workflow_id, run.status,
                   {sid: sr.status for sid, sr in run.steps.items()})

    @property
    def waiting(self) -> list[str]:
        """Steps waiting for an approval (none once the run is terminal)."""
        if self.status.is_terminal:
            return []
        return [sid for sid, status in self.steps.items() if status == StepStatus.WAITING]


def split_target(target: str) -> str:
    """``step[3]`` → ``step``."""
    if target.endswith("]") and "[" in target:
        base = target[: target.rindex("[")]
        if base and target[len(base) + 1 : -1].isdigit():
            return base
    return target


def max_attempts(wf: Workflow, target: str) -> int:
    step = wf.steps.get(split_target(target)) or wf.steps.get(target)
    if step is None or step.retry is None:
        return 1
    return max(step.retry.max_retries, 0) + 1


def job_attempt(job_id: str) -> int:
    _, sep, n = job_id.rpartition("@")
    return int(n) if sep and n.isdigit() else 0


def stable_dict(run: WorkflowRun) -> dict[str, Any]:
    """The run as stored, minus ``updated_at`` (a re-save of equal state may touch it)."""
    doc = run.to_dict()
    doc.pop("updated_at", None)
    return doc


class Invariants:
    """Checks the invariants on the events a simulation observes (see the module doc)."""

    def __init__(self, workflows: Sequence[Workflow], fail: Fail,
                 trace: Sequence[str] = ()) -> None:
        self.workflows = {wf.id: wf for wf in workflows}
        self.handler_ids = {
            wf.id: {s.on_error for s in wf.steps.values() if s.on_error} for wf in workflows
        }
        self.fail = fail
        self.trace = trace  # the simulation's trace: a violation quotes its lines
        self.latest: dict[str, RunView] = {}
        self.leases: dict[str, tuple[str, float]] = {}  # run -> (owner, expires at)
        self.terminal: dict[str, dict[str, Any]] = {}  # first terminal snapshot per run
        self.sent_jobs: dict[tuple[str, str], dict[str, None]] = {}

    def violation(self, invariant: str, run_id: str, target: str, job_id: str,
                  what: str) -> None:
        """Fail ``invariant`` naming the run, step and job, and the trace lines about
        them (``trace.violation_detail``)."""
        self.fail(invariant, violation_detail(self.trace, run_id, target, job_id, what))

    # ------------------------------------------------------------------ on each write

    def saved(self, run: WorkflowRun) -> None:
        """The engine stored ``run`` (its whole state after a batch)."""
        rid = run.id
        first = self.terminal.get(rid)
        if first is not None:
            snapshot = stable_dict(run)
            if snapshot != first:
                self.violation("terminal_stable", rid, "", "",
                               f"run {rid} was stored {first['status']} and then changed "
                               f"(now {run.status.value}, {_changed(first, snapshot)})")
                return
        elif run.status.is_terminal:
            self.terminal[rid] = stable_dict(run)
        self.latest[rid] = RunView.of(run)
        wf = self.workflows.get(run.workflow_id)
        if wf is not None:
            self._check_state(wf, run)

    def _check_state(self, wf: Workflow, run: WorkflowRun) -> None:
        handlers = self.handler_ids[wf.id]
        for sid, sr in run.steps.items():
            step = wf.steps.get(sid)
            if step is None:
                continue
            if sid in handlers:
                sources = [s.id for s in wf.steps.values() if s.on_error == sid]
                if not any((src := run.steps.get(s)) is not None and src.status in (
                        StepStatus.FAILED, StepStatus.TIMED_OUT) for s in sources):
                    self.violation("dependencies", run.id, sid, sr.job_id,
                                   f"handler {sid} started ({sr.status.value}) but none of "
                                   f"{sources} failed")
            else:
                for dep in step.depends_on:
                    d = run.steps.get(dep)
                    if d is None or d.status != StepStatus.SUCCEEDED:
                        self.violation("dependencies", run.id, sid, sr.job_id,
                                       f"{sid} is {sr.status.value} but its dependency "
                                       f"{dep} is {d.status.value if d else 'absent'}")
            if step.max_parallel > 0 and sr.children:
                running = [c.step_id for c in sr.children.values()
                           if c.status == StepStatus.RUNNING]
                if len(running) > step.max_parallel:
                    self.violation("max_parallel", run.id, sid, "",
                                   f"{sid} has {len(running)} children running {running} "
                                   f"> max_parallel {step.max_parallel}")
        for _, sr in all_step_runs(run):
            limit = max_attempts(wf, sr.step_id)
            if sr.attempts > limit:
                self.violation("attempts", run.id, sr.step_id, sr.job_id,
                               f"{sr.step_id} has attempts {sr.attempts} > max_retries + 1 "
                               f"= {limit}")

    # --------------------------------------------------------------- on each dispatch

    def dispatched(self, run_id: str, target: str, job_id: str) -> None:
        """The engine's dispatch hook: ``target``'s dependencies must have succeeded in
        the run's last stored state."""
        view = self.latest.get(run_id)
        wf = self.workflows.get(view.workflow_id) if view is not None else None
        if view is None or wf is None:
            self.violation("dependencies", run_id, target, job_id,
                           f"{job_id} dispatched before its run was stored")
            return
        base = split_target(target)
        step = wf.steps.get(base)
        if step is None:
            return
        if base not in self.handler_ids[wf.id]:
            for dep in step.depends_on:
                status = view.steps.get(dep)
                if status != StepStatus.SUCCEEDED:
                    self.violation("dependencies", run_id, target, job_id,
                                   f"{job_id} dispatched while dependency {dep} of {base} "
                                   f"is {status.value if status else 'absent'}")
        self.job_sent(run_id, target, job_id)

    def job_sent(self, run_id: str, target: str, job_id: str) -> None:
        """A job request for ``target`` went out (hook or bus): count distinct attempts."""
        view = self.latest.get(run_id)
        wf = self.workflows.get(view.workflow_id) if view is not None else None
        if wf is None:
            return
        jobs = self.sent_jobs.setdefault((run_id, target), {})
        jobs[job_id] = None
        limit = max_attempts(wf, target)
        if len(jobs) > limit or job_attempt(job_id) > limit:
            self.violation("attempts", run_id, target, job_id,
                           f"{target} attempted {len(jobs)} times ({', '.join(jobs)}) > "
                           f"max_retries + 1 = {limit}")

    # ------------------------------------------------------------ leases (one owner)

    def lease_held(self, run_id: str, owner: str, expires: float) -> bool:
        """``owner`` acquired or renewed the lease until ``expires``; True if it is new."""
        before = self.leases.get(run_id)
        self.leases[run_id] = (owner, expires)
        return before is None or before[0] != owner

    def lease_released(self, run_id: str, owner: str) -> None:
        held = self.leases.get(run_id)
        if held is not None and held[0] == owner:
            del self.leases[run_id]

    def acted(self, run_id: str, owner: str, what: str, now: float) -> None:
        """``owner`` wrote ``run_id``'s state or dispatched one of its jobs."""
        held = self.leases.get(run_id)
        if held is None or held[0] != owner or now > held[1]:
            state = ("nobody holds its lease" if held is None else
                     f"its lease is {held[0]}'s" if held[0] != owner else
                     f"its lease expired at {held[1]:.6f}")
            self.violation("single_owner", run_id, "", "",
                           f"engine {owner} {what} run {run_id} but {state}")

    # -------------------------------------------------------------------- at the end

    def final(self, run: WorkflowRun, events: Sequence[TimelineEvent]) -> None:
        """The run as finally stored, and its timeline."""
        first = self.terminal.get(run.id)
        if first is not None and stable_dict(run) != first:
            self.violation("terminal_stable", run.id, "", "",
                           f"stored run {run.id} differs from its first terminal snapshot "
                           f"({_changed(first, stable_dict(run))})")
            return
        self._check_timeline(run, events)

    def _check_timeline(self, run: WorkflowRun, events: Sequence[TimelineEvent]) -> None:
        last: dict[str, TimelineEvent] = {}
        run_event: TimelineEvent | None = None
        for e in events:
            if e.type.startswith("step_") and e.step_id and e.status:
                last[e.step_id] = e
            elif e.type == "run_status" and e.status:
                run_event = e
        copied = self._copied_by_rerun(run)
        for _, sr in all_step_runs(run):
            ev = last.get(sr.step_id)
            said = StepStatus(ev.status) if ev is not None else None
            if said is None and sr.step_id.split("[")[0] in copied:
                continue  # copied over from the run it reruns (SPEC §9): no event here
            if said is not None and said.is_terminal and said != sr.status:
                self.violation("timeline", run.id, sr.step_id, sr.job_id,
                               f"{sr.step_id} is {sr.status.value} but its last timeline "
                               f"event {ev.type if ev else ''} says {said.value}")
            if sr.status == StepStatus.SUCCEEDED and said != StepStatus.SUCCEEDED:
                self.violation("timeline", run.id, sr.step_id, sr.job_id,
                               f"{sr.step_id} succeeded but its last timeline event says "
                               f"{said.value if said else 'nothing'}")
        if run_event is not None and run_event.status != run.status.value:
            self.violation("timeline", run.id, "", "",
                           f"run {run.id} is {run.status.value} but its last run_status "
                           f"event says {run_event.status}")


    def _copied_by_rerun(self, run: WorkflowRun) -> set[str]:
        wf = self.workflows.get(run.workflow_id)
        return copied_by_rerun(wf, run) if wf is not None else set()


def copied_by_rerun(wf: Workflow, run: WorkflowRun) -> set[str]:
    """The steps a rerun from ``run.rerun_step`` copied from the run it reruns (SPEC §9):
    the step's transitive ``depends_on``. They have no events in the new run's timeline."""
    if not run.rerun_of or not run.rerun_step or run.rerun_step not in wf.steps:
        return set()
    todo, seen = list(wf.steps[run.rerun_step].depends_on), set()
    while todo:
        sid = todo.pop()
        if sid not in seen and sid in wf.steps:
            seen.add(sid)
            todo.extend(wf.steps[sid].depends_on)
    return seen


def _changed(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Which top-level fields (and steps) differ, for a readable ``terminal_stable``."""
    keys = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    if "steps" in keys:
        b, a = before.get("steps") or {}, after.get("steps") or {}
        steps = [s for s in sorted(b.keys() | a.keys()) if b.get(s) != a.get(s)]
        keys[keys.index("steps")] = f"steps {steps}"
    return "changed: " + ", ".join(keys) if keys else "no visible change"
