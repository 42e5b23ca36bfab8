"""The ready pass's ``Frontier`` (derived data, ``cordtrio.core.frontier``) never goes out
of sync: after every event it equals one rebuilt from the run, the steps it leaves out are
really no-ops to visit, its counts give the scans' run status, and the incremental ready
pass decides exactly like the walk over every step it replaced."""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_driver import (
    COMMON,
    Fed,
    Simulation,
    _describe,
    examples,
    new_run,
    reloaded,
    simulate,
)
from strategies import run_inputs, workflows

from cordtrio.core import machine, ready
from cordtrio.core.frontier import Frontier
from cordtrio.core.machine import Outcome, decide
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState, Tx
from cordtrio.core.status import (
    compute_run_status,
    failure_stands,
    set_run_status,
    update_run_status,
)
from cordtrio.model import RunStatus, StepStatus, Workflow, WorkflowRun


def _snapshot(front: Frontier) -> Frontier:
    """A copy to probe without disturbing the live one (the plan is shared)."""
    probe = copy.copy(front)
    probe.live = set(front.live)
    probe.seen = list(front.seen)
    probe.dirty = list(front.dirty)
    probe.recheck = set(front.recheck)
    return probe


def _counts(front: Frontier) -> tuple[int, ...]:
    return (front.failed, front.timed_out, front.waiting, front.unfinished,
            front.busy_handlers)


def _recount(plan: Plan, run: WorkflowRun) -> tuple[int, ...]:
    """``_counts`` written out from the run (independently of ``Frontier._count``)."""
    failed = timed_out = waiting = unfinished = busy = 0
    for sid in plan.order:
        sr = run.steps.get(sid)
        handler = sid in plan.handlers
        if sr is None:
            unfinished += not handler
            continue
        status = sr.status
        if status in (StepStatus.FAILED, StepStatus.CANCELLED):
            failed += 1
        elif status == StepStatus.TIMED_OUT:
            timed_out += 1
        elif status == StepStatus.WAITING:
            waiting += 1
        elif status != StepStatus.SUCCEEDED:
            unfinished += 1
        busy += handler and not status.is_terminal
    return (failed, timed_out, waiting, unfinished, busy)


def check_frontier(sim: Simulation, step: Fed, out: Outcome) -> None:
    front = sim.state.frontier
    if front is None:
        return  # no ready pass since the last load
    run = sim.run
    tx = Tx(sim.plan, sim.state, sim.now)
    probe = _snapshot(front)
    probe.refresh(run, lambda sid: ready.may_act(tx, sid))
    fresh = Frontier.build(sim.plan, run, lambda sid: ready.may_act(tx, sid))
    where = sim.fail_text(f"after {step.kind} {_describe(step.event)}")
    assert probe.live == fresh.live, f"live {probe.live} != rebuilt {fresh.live}\n{where}"
    assert probe.seen == fresh.seen, f"seen {probe.seen} != rebuilt {fresh.seen}\n{where}"
    assert _counts(probe) == _counts(fresh) == _recount(sim.plan, run), (
        f"counts {_counts(probe)}, rebuilt {_counts(fresh)}, recounted "
        f"{_recount(sim.plan, run)}\n{where}")
    assert probe.failure_stands(run) == failure_stands(sim.plan, run), where
    if not run.status.is_terminal:
        assert probe.run_status(run) == compute_run_status(sim.plan, run), where
    # the steps left out are sure to do nothing when visited (now, and whatever the time)
    later = sim.now.replace(year=sim.now.year + 20)
    for now in (sim.now, later):
        copied = RunState(WorkflowRun.from_dict(run.to_dict()))
        before = copied.run.to_dict()
        probe_tx = Tx(sim.plan, copied, now)
        for i, sid in enumerate(sim.plan.order):
            if i in fresh.live:
                continue
            acted = ready._visit(probe_tx, sid, False)
            assert not acted and not probe_tx.effects and not probe_tx.rows \
                and not probe_tx.changes, (
                f"{sid} left out of the frontier but its visit acted\n{where}")
        assert copied.run.to_dict() == before, f"a left-out visit changed the run\n{where}"


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_frontier_matches_a_rebuild_after_every_event(wf: Workflow, run_input: dict[str, Any],
                                                      data: Any) -> None:
    # failure-heavy runs: failures trigger on_error handlers, whose counts are the subtle ones
    simulate(data, wf, run_input, check_frontier, flakiness_choices=(2, 5, 7))


def full_walk_ready_pass(tx: Tx) -> None:
    """The ready pass before the frontier: every step, every pass; status by scans."""
    run = tx.run
    if run.status.is_terminal:
        return
    if run.status == RunStatus.PENDING:
        set_run_status(tx, RunStatus.RUNNING)
        ready.arm_run_timeout(tx)
    changed = True
    while changed and not run.status.is_terminal:
        changed = False
        only_handlers = failure_stands(tx.plan, run)
        for sid in tx.plan.order:
            if ready._visit(tx, sid, only_handlers):
                changed = True
                only_handlers = only_handlers or ready._failed(tx, sid)
        update_run_status(tx)  # no frontier is ever built: compute_run_status


def _changes(out: Outcome) -> tuple[Any, ...]:
    c = out.changes
    return (c.header, c.steps, c.children, c.context_steps, c.context_keys, c.previous_status)


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_incremental_ready_pass_decides_like_the_full_walk(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    """Replaying a run with the full walk gives the same effects in the same order, the
    same changes (what the store writes) and the same run, event after event."""
    outcomes: list[Outcome] = []
    sim = simulate(data, wf, run_input, lambda _s, _f, out: outcomes.append(out))
    plan = Plan.build(wf)
    state = RunState(new_run(wf, sim.run_id, run_input))
    with (mock.patch.object(machine, "ready_pass", full_walk_ready_pass),
          mock.patch.object(machine, "quick_start", lambda _tx: False),
          mock.patch.object(machine, "quick_result", lambda *_: False)):
        for i, step in enumerate(sim.log):
            if step.kind == "reload":
                state = reloaded(state)
            again = decide(plan, state, step.event, step.now)
            assert state.frontier is None
            what = f"event {i} ({step.kind} {_describe(step.event)})"
            assert repr(again.effects) == repr(outcomes[i].effects), sim.fail_text(
                f"{what}: effects differ")
            assert repr(again.rows) == repr(outcomes[i].rows), sim.fail_text(
                f"{what}: timeline rows differ")
            assert _changes(again) == _changes(outcomes[i]), sim.fail_text(
                f"{what}: changes differ")
    assert state.run.to_dict() == sim.run.to_dict()
