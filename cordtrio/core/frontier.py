"""The ready pass's frontier: the steps it must visit, and the step-status counts of the
run-status rule, kept up to date from what the core touches.

Why: walking every step on every event made a result cost O(steps) (a 201-step DAG walked
all 201 steps at least once per result, and the run-status rule scanned them again). Most
steps are *settled* for the ready pass: their visit is sure to do nothing until their own
StepRun or one of their dependencies' changes (see ``ready.may_act``). The frontier keeps
the others (``live``), so a pass costs O(live + touched steps and their dependents) and
the run status is O(1).

Derived data, like ``FanoutIndex``: never stored, built from the run by the first ready
pass after a load, then fed by ``Tx.touch_step``. That is sound because every change to a
top-level StepRun is touched anyway: the store writes only the touched steps, so an
untouched change would already be lost on the next load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..model import RunStatus, StepStatus, WorkflowRun
from .plan import Plan

_new = object.__new__

MayAct = Callable[[str], bool]
"""``may_act(step_id)``: False only when visiting the step now is sure to be a no-op."""

# Module constants: on Python 3.11 reading ``StepStatus.X`` costs a descriptor call (~90 ns)
# and the frontier reads them on every event.
_WAITING, _PENDING, _RUNNING = StepStatus.WAITING, StepStatus.PENDING, StepStatus.RUNNING
_SUCCEEDED, _TIMED_OUT = StepStatus.SUCCEEDED, StepStatus.TIMED_OUT
_FAILED = (StepStatus.FAILED, StepStatus.CANCELLED)
_STOPPED = (RunStatus.CANCELLED, RunStatus.TIMED_OUT)
_RUN_RUNNING, _RUN_WAITING = RunStatus.RUNNING, RunStatus.WAITING
_RUN_SUCCEEDED, _RUN_FAILED, _RUN_TIMED_OUT = (
    RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT
)


@dataclass(slots=True)
class Frontier:
    """Per run: live steps (positions in ``plan.order``) and step-status counts.

    ``seen`` is each step's status as last counted (None: no StepRun yet); ``dirty`` the
    steps touched since then; ``recheck`` the positions whose liveness may have changed (a
    touched step and the steps depending on it); ``live`` is exact after ``refresh``. The
    counts are over the workflow's steps that have a StepRun (``busy_handlers``: triggered
    on_error handlers not terminal yet), except ``unfinished``, which also counts the
    steps (not on_error handlers) with no StepRun yet: the run cannot succeed while one is
    left, and starting one leaves the count as it is.
    """

    plan: Plan
    live: set[int] = field(default_factory=set)
    seen: list[StepStatus | None] = field(default_factory=list)
    failed: int = 0  # failed or cancelled
    timed_out: int = 0
    waiting: int = 0
    unfinished: int = 0  # pending or running, or (not a handler) no StepRun yet
    busy_handlers: int = 0
    dirty: list[str] = field(default_factory=list)
    recheck: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, plan: Plan, run: WorkflowRun, may_act: MayAct) -> Frontier:
        """The frontier of ``run`` as it is now (one walk over the steps)."""
        if not run.steps:
            return cls.new(plan)
        front = cls(plan=plan, seen=[None] * len(plan.order))
        steps = run.steps
        seen = front.seen
        for i, sid in enumerate(plan.order):
            sr = steps.get(sid)
            if sr is not None:
                seen[i] = sr.status
            front._count(sid, seen[i], 1)
            if may_act(sid):
                front.live.add(i)
        return front

    @classmethod
    def new(cls, plan: Plan) -> Frontier:
        """The frontier of a run not started yet, every new run's: known from the plan.
        Its fields set here, without ``__init__`` (keywords, defaults tested): half the
        cost, once per run."""
        order = plan.order
        front = _new(cls)
        front.plan = plan
        front.live = set(plan.roots)
        front.seen = [None] * len(order)
        front.failed = front.timed_out = front.waiting = 0
        front.unfinished = len(order) - len(plan.handlers)
        front.busy_handlers = 0
        front.dirty = []
        front.recheck = set()
        return front

    def absorb(self, run: WorkflowRun) -> None:
        """Fold the touched steps into the counts and mark what to recheck."""
        rechecks = self.plan.rechecks
        handlers = self.plan.handlers
        steps = run.steps
        seen = self.seen
        recheck = self.recheck
        for sid in self.dirty:
            affected = rechecks.get(sid)
            if affected is None:
                continue  # not a step of this workflow
            i = affected[0]
            sr = steps.get(sid)
            status = sr.status if sr is not None else None
            old = seen[i]
            if status != old:
                if sid in handlers:
                    self._count(sid, old, -1)
                    self._count(sid, status, 1)
                else:  # ``_count`` inlined for the common moves of a counted step
                    if old is None or old is _RUNNING or old is _PENDING:
                        self.unfinished -= 1
                    else:
                        self._count(sid, old, -1)
                    if status is _RUNNING or status is _PENDING:
                        self.unfinished += 1
                    elif status is not _SUCCEEDED:
                        self._count(sid, status, 1)
                seen[i] = status
            recheck.update(affected)
        self.dirty.clear()

    def refresh(self, run: WorkflowRun, may_act: MayAct) -> list[int]:
        """Bring ``live`` up to date; returns the positions that became live."""
        if self.dirty:
            self.absorb(run)
        woke: list[int] = []
        if self.recheck:
            order = self.plan.order
            for i in self.recheck:
                if may_act(order[i]):
                    if i not in self.live:
                        self.live.add(i)
                        woke.append(i)
                else:
                    self.live.discard(i)
            self.recheck.clear()
        return woke

    def failure_stands(self, run: WorkflowRun) -> bool:
        """``status.failure_stands`` from the counts."""
        if self.dirty:
            self.absorb(run)
        return bool(self.failed or self.timed_out)

    def run_status(self, run: WorkflowRun) -> RunStatus:
        """``status.compute_run_status`` (SPEC §7) from the counts."""
        if run.status in _STOPPED:
            return run.status
        if self.dirty:
            self.absorb(run)
        if (self.failed or self.timed_out) and self.busy_handlers:
            return _RUN_RUNNING
        if self.failed:
            return _RUN_FAILED
        if self.timed_out:
            return _RUN_TIMED_OUT
        if self.waiting:
            return _RUN_WAITING
        if not self.unfinished:
            return _RUN_SUCCEEDED
        return _RUN_RUNNING

    def _count(self, sid: str, status: StepStatus | None, sign: int) -> None:
        handler = sid in self.plan.handlers
        if status is None:
            if not handler:
                self.unfinished += sign
            return
        if status == _SUCCEEDED:
            return
        if status in _FAILED:
            self.failed += sign
            return
        if status == _TIMED_OUT:
            self.timed_out += sign
            return
        if status == _WAITING:
            self.waiting += sign
        else:
            self.unfinished += sign
        if handler:
            self.busy_handlers += sign
