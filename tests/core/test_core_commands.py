"""SPEC §9 (approve, cancel, rerun_from) and §12 recovery (re-arm timers, re-dispatch
nothing already running)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from harness import T0, Sim, step, workflow

from cordtrio.core.commands import rerun_from
from cordtrio.core.events import (
    Approve,
    ArmTimer,
    CancelRun,
    Dispatch,
    JobStarted,
    Recover,
    ResendDue,
    TimerKind,
)
from cordtrio.core.plan import Plan
from cordtrio.errors import InvalidStateError, NotFoundError
from cordtrio.model import RetryConfig, RunStatus, StepRun, StepStatus, StepType, WorkflowRun
from cordtrio.validation import collect_dependencies

APPROVAL = StepType.APPROVAL

# ------------------------------------------------------------------------------ approve


def _approval_sim():
    wf = workflow(step("gate", type=APPROVAL), step("b", depends_on=["gate"]), step("p"))
    sim = Sim(wf)
    sim.start()
    return sim


@pytest.mark.parametrize("step_id, error", [
    ("ghost", NotFoundError),   # no such step
    ("b", InvalidStateError),   # not started
    ("p", InvalidStateError),   # running, not waiting
])
def test_approve_errors_leave_the_run_unchanged(step_id, error):
    sim = _approval_sim()
    before = sim.run.to_dict()
    with pytest.raises(error):
        sim.feed(Approve(step_id))
    assert sim.run.to_dict() == before


def test_approve_twice_is_not_waiting():
    sim = _approval_sim()
    sim.feed(Approve("gate"))
    with pytest.raises(InvalidStateError, match="not waiting"):
        sim.feed(Approve("gate"))


def test_approve_succeeds_the_step_and_dependents_dispatch():
    sim = _approval_sim()
    assert sim.run.status == RunStatus.WAITING
    sim.feed(Approve("gate", approved=True))
    assert sim.status("gate") == StepStatus.SUCCEEDED
    assert [e.step_id for e in sim.events("step_approved")] == ["gate"]
    assert sim.dispatched()[-1] == "run-1:b@1"
    assert sim.run.status == RunStatus.RUNNING


def test_reject_fails_the_step():
    sim = _approval_sim()
    sim.feed(Approve("gate", approved=False))
    assert sim.status("gate") == StepStatus.FAILED
    assert [e.step_id for e in sim.events("step_rejected")] == ["gate"]
    assert sim.status("b") is None
    assert sim.run.status == RunStatus.FAILED


# ------------------------------------------------------------------------------- cancel


def _busy_sim():
    wf = workflow(
        step("a"),
        step("fan", for_each="input.xs", max_parallel=2),
        step("gate", type=APPROVAL),
        step("d", type=StepType.DELAY, delay_sec=60),
        step("later", depends_on=["a"]),
    )
    sim = Sim(wf, run_input={"xs": [1, 2, 3]})
    sim.start()
    return sim


def test_cancel_cancels_every_non_terminal_step_and_child():
    sim = _busy_sim()
    sim.succeed("run-1:fan[0]@1")
    sim.now = T0 + timedelta(seconds=5)
    sim.feed(CancelRun())
    assert sim.run.status == RunStatus.CANCELLED
    assert sim.run.completed_at == T0 + timedelta(seconds=5)
    for sid in ("a", "fan", "gate", "d"):
        assert sim.status(sid) == StepStatus.CANCELLED
    kids = sim.sr("fan").children
    assert [k.status for k in kids.values()] == [
        StepStatus.SUCCEEDED, StepStatus.CANCELLED, StepStatus.CANCELLED]
    ev = sim.events("run_status")[-1]
    assert (ev.status, ev.message) == ("cancelled", "run cancelled")


def test_cancel_sends_one_job_cancel_per_distinct_running_job():
    sim = _busy_sim()
    sim.feed(CancelRun())
    jobs = [c.job_id for c in sim.cancels]
    assert sorted(jobs) == ["run-1:a@1", "run-1:fan[0]@1", "run-1:fan[1]@1"]
    assert all(c.reason == "workflow run cancelled" for c in sim.cancels)


def test_cancel_of_a_terminal_run_changes_nothing():
    sim = _busy_sim()
    sim.feed(CancelRun())
    before = sim.run.to_dict()
    out = sim.feed(CancelRun())
    assert out.effects == [] and out.rows == [] and not out.changes
    assert sim.run.to_dict() == before


def test_timers_after_cancel_change_nothing():
    sim = _busy_sim()
    sim.feed(CancelRun())
    n = len(sim.effects)
    sim.advance(3600)
    assert len(sim.effects) == n


# --------------------------------------------------------------------------- rerun_from


def _old_run():
    wf = workflow(
        step("fetch"),
        step("parse", depends_on=["fetch"]),
        step("side"),
        step("load", depends_on=["parse"]),
    )
    sim = Sim(wf, run_input={"src": {"url": "x"}}, labels={"team": "a"},
              metadata={"origin": "cli"}, triggered_by="bob")
    sim.start()
    sim.succeed("run-1:fetch@1", {"f": 1})
    sim.succeed("run-1:side@1", {"s": 1})
    sim.succeed("run-1:parse@1", {"p": 1})
    sim.fail("run-1:load@1")
    return wf, sim.run


def _rerun(wf, old, step_id="", dry_run=False):
    deps = collect_dependencies(wf, step_id) if step_id else set()
    return rerun_from(wf, old, step_id, dry_run, "run-2", T0, deps)


def test_rerun_creates_a_pending_copy_with_a_new_id():
    wf, old = _old_run()
    new = _rerun(wf, old)
    assert new.id == "run-2" and new.status == RunStatus.PENDING
    assert (new.workflow_id, new.org_id, new.team_id, new.triggered_by) == (
        old.workflow_id, old.org_id, old.team_id, "bob")
    assert new.input == old.input and new.input is not old.input
    assert new.input["src"] is not old.input["src"]  # a deep copy
    assert new.labels == {"team": "a"}
    assert new.metadata == {"origin": "cli", "rerun_of": "run-1"}
    assert (new.rerun_of, new.rerun_step, new.dry_run) == ("run-1", "", False)
    assert new.steps == {} and new.started_at is None


def test_rerun_does_not_share_labels_or_metadata_with_the_old_run():
    wf, old = _old_run()
    new = _rerun(wf, old, dry_run=True)
    assert "dry_run" not in old.labels and "dry_run" not in old.metadata
    assert new.metadata["dry_run"] == "true" and new.labels["dry_run"] == "true"
    assert new.dry_run is True


def test_rerun_from_step_copies_transitive_dependencies_only():
    wf, old = _old_run()
    new = _rerun(wf, old, "load")
    assert set(new.steps) == {"fetch", "parse"}
    assert new.steps["parse"] == old.steps["parse"]
    assert new.steps["parse"] is not old.steps["parse"]
    assert set(new.context["steps"]) == {"fetch", "parse"}
    assert new.context["steps"]["fetch"]["output"] == {"f": 1}
    assert new.metadata["rerun_step"] == "load" and new.rerun_step == "load"


def test_rerun_copies_are_deep():
    wf, old = _old_run()
    snapshot = copy.deepcopy(old.to_dict())
    new = _rerun(wf, old, "load")
    new.context["steps"]["fetch"]["output"]["f"] = 99
    new.steps["fetch"].input["x"] = 1
    assert old.to_dict() == snapshot


def test_rerun_from_step_requires_succeeded_dependencies():
    wf, old = _old_run()
    old.steps["fetch"].status = StepStatus.FAILED
    with pytest.raises(InvalidStateError, match="dependency fetch not succeeded"):
        _rerun(wf, old, "load")


def test_rerun_from_missing_step_is_not_found():
    wf, old = _old_run()
    with pytest.raises(NotFoundError):
        rerun_from(wf, old, "ghost", False, "run-2", T0, set())


def test_rerun_then_start_dispatches_only_the_remaining_steps():
    wf, old = _old_run()
    sim = Sim(wf, run=_rerun(wf, old, "load"))
    sim.start()
    assert sim.dispatched() == ["run-2:side@1", "run-2:load@1"]


# -------------------------------------------------------------------------------- recover


def _reload(sim, *, at):
    """A fresh engine: the run reloaded from its stored form, indexes rebuilt, at ``at``."""
    run = WorkflowRun.from_dict(sim.run.to_dict())
    new = Sim(sim.plan.workflow, run=run, now=at)
    new.feed(Recover())
    return new


def test_recover_rearms_timers_and_publishes_running_jobs_again():
    wf = workflow(
        step("slow", timeout_sec=100),
        step("flaky", retry=RetryConfig(max_retries=3, initial_backoff_sec=50)),
        step("d", type=StepType.DELAY, delay_sec=80),
        timeout_sec=1000,
    )
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:flaky@1")
    back = _reload(sim, at=T0 + timedelta(seconds=10))
    assert set(back.timers) == {
        ArmTimer(T0 + timedelta(seconds=1000), TimerKind.RUN_TIMEOUT),
        ArmTimer(T0 + timedelta(seconds=100), TimerKind.STEP_TIMEOUT, "slow", "run-1:slow@1"),
        ArmTimer(T0 + timedelta(seconds=50), TimerKind.WAKE, "flaky"),
        ArmTimer(T0 + timedelta(seconds=80), TimerKind.WAKE, "d"),
    }
    # the running job goes out again: same job id, input and request, marked ``again``
    (again,) = back.dispatches
    first = sim_dispatch(sim, "run-1:slow@1")
    assert again.again and not first.again
    assert (again.job_id, again.target_id, again.request, again.payload, again.context_key) == (
        first.job_id, first.target_id, first.request, first.payload, first.context_key)
    back.dispatches.clear()
    back.advance(40)
    assert back.dispatched() == ["run-1:flaky@2"]
    back.advance(30)
    assert back.status("d") == StepStatus.SUCCEEDED
    back.advance(20)
    assert back.status("slow") == StepStatus.TIMED_OUT


def sim_dispatch(sim: Sim, job_id: str) -> Dispatch:
    (found,) = [d for d in sim.dispatches if d.job_id == job_id]
    return found


def test_recover_after_backoff_expired_dispatches_the_retry_at_once():
    wf = workflow(step("flaky", retry=RetryConfig(max_retries=3, initial_backoff_sec=5)))
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:flaky@1")
    back = _reload(sim, at=T0 + timedelta(seconds=60))
    assert back.dispatched() == ["run-1:flaky@2"]


def test_recover_fanout_keeps_max_parallel_and_index_order():
    wf = workflow(step("fan", for_each="input.xs", max_parallel=2,
                       retry=RetryConfig(max_retries=1, initial_backoff_sec=5)))
    sim = Sim(wf, run_input={"xs": list(range(5))})
    sim.start()
    sim.fail("run-1:fan[0]@1")  # backoff; fan[2] takes the slot
    back = _reload(sim, at=T0 + timedelta(seconds=1))
    assert [d.job_id for d in back.dispatches] == ["run-1:fan[1]@1", "run-1:fan[2]@1"]
    for again in back.dispatches:  # published again with their for-each env
        first = sim_dispatch(sim, again.job_id)
        assert again.again and again.request == first.request
        assert again.payload == first.payload
    back.dispatches.clear()
    assert ArmTimer(T0 + timedelta(seconds=5), TimerKind.WAKE, "fan[0]") in back.timers
    back.advance(5)
    back.succeed("run-1:fan[1]@1")
    assert back.dispatched() == ["run-1:fan[0]@2"]
    back.succeed("run-1:fan[2]@1")
    assert back.dispatched() == ["run-1:fan[0]@2", "run-1:fan[3]@1"]


def test_recover_of_a_created_never_started_run_leaves_it_pending():
    # rerun_from creates a run without starting it; recovery must not start it either.
    wf = workflow(step("a"), timeout_sec=30)
    run = WorkflowRun(id="run-1", workflow_id="wf1", org_id="org1")
    sim = Sim(wf, run=run)
    out = sim.feed(Recover())
    assert out.effects == [] and out.rows == []
    assert sim.run.status == RunStatus.PENDING
    sim.start()
    assert sim.dispatched() == ["run-1:a@1"]
    assert [t.kind for t in sim.timers].count(TimerKind.RUN_TIMEOUT) == 1


def test_recover_of_a_terminal_run_does_nothing():
    run = WorkflowRun(id="run-1", workflow_id="wf1", status=RunStatus.FAILED, steps={
        "a": StepRun(step_id="a", status=StepStatus.FAILED)})
    sim = Sim(workflow(step("a")), run=run)
    out = sim.feed(Recover())
    assert out.effects == [] and out.rows == [] and not out.changes


# ------------------------------------------------------------------ job starts (SPEC §6, §13)


def test_with_starts_reported_a_step_timeout_counts_from_the_jobs_start():
    sim = Sim(workflow(step("slow", timeout_sec=100)), starts_reported=True)
    sim.start()
    assert [t for t in sim.timers if t.kind == TimerKind.STEP_TIMEOUT] == []  # queued
    sim.now = T0 + timedelta(seconds=500)
    out = sim.feed(JobStarted("run-1:slow@1"))
    assert ArmTimer(T0 + timedelta(seconds=600), TimerKind.STEP_TIMEOUT, "slow",
                    "run-1:slow@1") in out.effects
    assert sim.sr("slow").started_at == T0 + timedelta(seconds=500)
    assert "slow" in out.changes.steps
    sim.advance(99)
    assert sim.status("slow") == StepStatus.RUNNING
    sim.advance(1)
    assert sim.status("slow") == StepStatus.TIMED_OUT


def test_a_timer_armed_before_a_later_start_does_not_time_the_job_out():
    sim = Sim(workflow(step("slow", timeout_sec=100)))  # armed at dispatch: T0 + 100
    sim.start()
    sim.now = T0 + timedelta(seconds=50)
    sim.feed(JobStarted("run-1:slow@1"))  # a redelivery started it again at 50
    sim.advance(50)  # T0 + 100: the first timer fires, too early for the new start
    assert sim.status("slow") == StepStatus.RUNNING
    sim.advance(50)
    assert sim.status("slow") == StepStatus.TIMED_OUT


def test_starts_of_stale_unknown_or_untimed_jobs_change_nothing():
    sim = Sim(workflow(step("slow", timeout_sec=100), step("free")), starts_reported=True)
    sim.start()
    for job_id in ("run-1:slow@7", "other-run:slow@1", "run-1:nope@1", "garbage",
                   "run-1:free@1"):
        out = sim.feed(JobStarted(job_id))
        assert out.effects == [] and out.rows == [] and not out.changes, job_id


# ------------------------------------------------------------------ resending (SPEC §13)


def test_resend_due_publishes_again_only_running_jobs_without_a_result_for_long_enough():
    wf = workflow(step("a"), step("fan", for_each="input.xs"), step("gate", type=APPROVAL))
    sim = Sim(wf, run_input={"xs": [1, 2]})
    sim.plan = Plan.build(wf, resend_after=60.0)
    sim.start()
    sim.succeed("run-1:fan[0]@1")
    sim.now = T0 + timedelta(seconds=30)
    assert sim.feed(ResendDue()).effects == []  # not overdue yet
    sim.now = T0 + timedelta(seconds=60)
    out = sim.feed(ResendDue())
    again = [e for e in out.effects if isinstance(e, Dispatch)]
    assert sorted(d.job_id for d in again) == ["run-1:a@1", "run-1:fan[1]@1"]
    assert all(d.again for d in again) and not out.changes  # state untouched
    (child,) = [d for d in again if d.target_id == "fan[1]"]
    assert child.request.env["foreach_index"] == "1" and child.payload["item"] == 2


def test_resend_due_is_off_without_resend_after_and_on_finished_runs():
    sim = Sim(workflow(step("a")))
    sim.start()
    sim.now = T0 + timedelta(hours=5)
    assert sim.feed(ResendDue()).effects == []
    sim.plan = Plan.build(sim.plan.workflow, resend_after=60.0)
    sim.succeed("run-1:a@1")
    assert sim.feed(ResendDue()).effects == []
