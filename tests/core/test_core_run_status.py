"""SPEC §7: the run status rule, the workflow timeout, ``on_error`` handlers, and cancelling
what is still running when a run ends badly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from harness import T0, Sim, step, workflow

from cordtrio.core.events import ArmTimer, TimerKind
from cordtrio.core.plan import Plan
from cordtrio.core.status import compute_run_status
from cordtrio.model import RetryConfig, RunStatus, StepRun, StepStatus, StepType, WorkflowRun
from cordtrio.protocol import JobStatus

S = StepStatus
R = RunStatus


def _status(a, b, *, run_status=R.RUNNING, handler=None):
    """compute_run_status for steps a, b (plus an optional untriggered/triggered handler)."""
    steps = [step("a", on_error="h" if handler is not None else ""), step("b")]
    if handler is not None:
        steps.append(step("h"))
    plan = Plan.build(workflow(*steps))
    run = WorkflowRun(id="r", status=run_status)
    for sid, st in (("a", a), ("b", b), ("h", handler)):
        if st is not None:
            run.steps[sid] = StepRun(step_id=sid, status=st)
    return compute_run_status(plan, run)


@pytest.mark.parametrize("a, b, expected", [
    (S.FAILED, S.SUCCEEDED, R.FAILED),
    (S.CANCELLED, S.SUCCEEDED, R.FAILED),
    (S.FAILED, S.TIMED_OUT, R.FAILED),        # failed wins over timed_out
    (S.TIMED_OUT, S.WAITING, R.TIMED_OUT),    # timed_out wins over waiting
    (S.TIMED_OUT, S.SUCCEEDED, R.TIMED_OUT),
    (S.WAITING, S.RUNNING, R.WAITING),        # waiting wins over running
    (S.SUCCEEDED, S.SUCCEEDED, R.SUCCEEDED),
    (S.SUCCEEDED, S.RUNNING, R.RUNNING),
    (S.SUCCEEDED, S.PENDING, R.RUNNING),
    (S.SUCCEEDED, None, R.RUNNING),           # a step not started yet
])
def test_compute_run_status_table(a, b, expected):
    assert _status(a, b) == expected


@pytest.mark.parametrize("final", [R.CANCELLED, R.TIMED_OUT])
def test_cancelled_and_timed_out_runs_are_final(final):
    assert _status(S.SUCCEEDED, S.SUCCEEDED, run_status=final) == final


def test_untriggered_handler_does_not_block_success():
    assert _status(S.SUCCEEDED, S.SUCCEEDED, handler=None) == R.SUCCEEDED
    plan = Plan.build(workflow(step("a", on_error="h"), step("h")))
    run = WorkflowRun(id="r", steps={"a": StepRun(step_id="a", status=S.SUCCEEDED)})
    assert compute_run_status(plan, run) == R.SUCCEEDED


def test_busy_handler_keeps_a_failed_run_running():
    assert _status(S.FAILED, S.SUCCEEDED, handler=S.RUNNING) == R.RUNNING
    assert _status(S.FAILED, S.SUCCEEDED, handler=S.PENDING) == R.RUNNING
    assert _status(S.FAILED, S.SUCCEEDED, handler=S.WAITING) == R.RUNNING
    assert _status(S.FAILED, S.SUCCEEDED, handler=S.SUCCEEDED) == R.FAILED


def test_terminal_status_sets_completed_at():
    sim = Sim(workflow(step("a")))
    sim.start()
    sim.now = T0 + timedelta(seconds=9)
    sim.succeed("run-1:a@1")
    assert sim.run.status == R.SUCCEEDED
    assert sim.run.completed_at == T0 + timedelta(seconds=9)
    assert [e.status for e in sim.events("run_status")] == ["running", "succeeded"]


# ------------------------------------------------------------------- workflow timeout


def _timed(**kw):
    wf = workflow(step("a"), step("b"), step("c", depends_on=["a"]), timeout_sec=60, **kw)
    sim = Sim(wf)
    sim.start()
    return sim


def test_run_timeout_timer_is_armed_from_started_at():
    sim = _timed()
    assert ArmTimer(T0 + timedelta(seconds=60), TimerKind.RUN_TIMEOUT) in sim.timers


def test_run_timeout_times_the_run_out_and_cancels_running_jobs():
    sim = _timed()
    sim.succeed("run-1:b@1")
    sim.advance(59)
    assert sim.run.status == R.RUNNING
    sim.advance(1)
    assert sim.run.status == R.TIMED_OUT
    assert sim.run.completed_at == T0 + timedelta(seconds=60)
    assert [c.job_id for c in sim.cancels] == ["run-1:a@1"]
    assert sim.status("a").is_terminal
    ev = sim.events("run_status")[-1]
    assert (ev.status, ev.message) == ("timed_out", "run timed out")


def test_run_timeout_after_completion_does_nothing():
    sim = _timed()
    for job in ("run-1:a@1", "run-1:b@1", "run-1:c@1"):
        sim.succeed(job)
    assert sim.run.status == R.SUCCEEDED
    sim.advance(120)
    assert sim.run.status == R.SUCCEEDED
    assert sim.cancels == []


def test_late_result_after_run_timeout_is_ignored():
    sim = _timed()
    sim.advance(60)
    out = sim.succeed("run-1:a@1")
    assert out.effects == [] and out.rows == []
    assert sim.run.status == R.TIMED_OUT


# --------------------------------------------------------------------------- on_error


def _handled(**a_kw):
    wf = workflow(
        step("a", on_error="cleanup", **a_kw),
        step("b", depends_on=["a"]),
        step("cleanup", depends_on=["b"],
             input={"msg": "${error.message}", "failed": "${error.step_id}"}),
    )
    sim = Sim(wf)
    sim.start()
    return sim


def test_handler_never_starts_on_its_own():
    sim = _handled()
    sim.succeed("run-1:a@1")
    sim.succeed("run-1:b@1")
    assert "cleanup" not in sim.run.steps
    assert sim.run.status == R.SUCCEEDED  # the untriggered handler does not block success
    assert all(":cleanup@" not in j for j in sim.dispatched())


def test_failure_triggers_handler_regardless_of_its_dependencies_with_error_scope():
    sim = _handled()
    sim.fail("run-1:a@1", "disk full")
    [ev] = sim.events("step_error_handler_started")
    assert ev.step_id == "cleanup"
    assert sim.status("b") is None  # b depends on the failed step: never started
    assert sim.dispatched()[-1] == "run-1:cleanup@1"
    assert sim.dispatches[-1].payload == {"msg": "disk full", "failed": "a"}
    assert sim.run.status == R.RUNNING


def test_run_stays_running_until_handler_terminal_then_fails():
    sim = _handled()
    sim.fail("run-1:a@1", "disk full")
    assert sim.run.status == R.RUNNING
    sim.succeed("run-1:cleanup@1")
    assert sim.run.status == R.FAILED
    assert sim.run.error["step_id"] == "a"


def test_handler_is_triggered_only_after_retries_are_exhausted():
    sim = _handled(retry=RetryConfig(max_retries=1))
    sim.fail("run-1:a@1")
    assert sim.events("step_error_handler_started") == []
    sim.advance(1)
    sim.fail("run-1:a@2")
    assert len(sim.events("step_error_handler_started")) == 1


def test_waiting_approval_handler_keeps_the_run_open_until_decided():
    from cordtrio.core.events import Approve

    wf = workflow(step("a", on_error="review"), step("review", type=StepType.APPROVAL))
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:a@1")
    assert sim.status("review") == S.WAITING
    assert not sim.run.status.is_terminal
    sim.feed(Approve("review"))
    assert sim.status("review") == S.SUCCEEDED
    assert sim.run.status == R.FAILED


def test_handlers_own_on_error_is_not_followed():
    wf = workflow(
        step("a", on_error="h1"),
        step("h1", on_error="h2"),
        step("h2"),
    )
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:a@1")
    sim.fail("run-1:h1@1")
    assert "h2" not in sim.run.steps
    assert sim.run.status == R.FAILED


def test_failing_run_cancels_a_parallel_branch_still_running():
    sim = Sim(workflow(step("a"), step("b"), step("c")))
    sim.start()
    sim.fail("run-1:b@1")
    assert sim.run.status == R.FAILED
    assert sorted(c.job_id for c in sim.cancels) == ["run-1:a@1", "run-1:c@1"]
    assert sim.status("a") == S.CANCELLED and sim.status("c") == S.CANCELLED


def test_timed_out_run_cancels_a_parallel_branch_still_running():
    sim = Sim(workflow(step("a"), step("b")))
    sim.start()
    sim.fail("run-1:b@1", status=JobStatus.TIMEOUT)
    assert sim.run.status == R.TIMED_OUT
    assert [c.job_id for c in sim.cancels] == ["run-1:a@1"]


def test_failing_run_cancels_fanout_children_still_running():
    wf = workflow(step("fan", for_each="input.xs"), step("b"))
    sim = Sim(wf, run_input={"xs": [1, 2]})
    sim.start()
    sim.fail("run-1:b@1")
    assert sorted(c.job_id for c in sim.cancels) == ["run-1:fan[0]@1", "run-1:fan[1]@1"]


def test_shared_handler_is_triggered_once_with_the_first_failure():
    wf = workflow(step("a", on_error="h"), step("b", on_error="h"),
                  step("h", input={"who": "${error.step_id}"}))
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:b@1", "b broke")
    sim.fail("run-1:a@1", "a broke")
    assert len(sim.events("step_error_handler_started")) == 1
    assert [d.job_id for d in sim.dispatches if ":h@" in d.job_id] == ["run-1:h@1"]
    assert sim.dispatches[-1].payload == {"who": "b"}
