"""SPEC §6 (and §8): folding job results into the run; retries, backoff, step timeouts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from harness import T0, Sim, step, workflow

from cordtrio.core.events import ArmTimer, LoadedOutput, ResultReceived, TimerFired, TimerKind
from cordtrio.core.results import backoff_seconds, parse_job_id, retry_allowed
from cordtrio.model import RetryConfig, RunStatus, StepRun, StepStatus, WorkflowRun
from cordtrio.protocol import JobResult, JobStatus

# ------------------------------------------------------------------------- job ids


@pytest.mark.parametrize("job_id, parsed", [
    ("run-1:s@3", ("run-1", "s", 3)),
    ("a:b:c:s@2", ("a:b:c", "s", 2)),
    ("r:fan[4]@1", ("r", "fan[4]", 1)),
    ("r:s", ("r", "s", 0)),
])
def test_parse_job_id_splits_on_last_colon_and_strips_attempt(job_id, parsed):
    assert parse_job_id(job_id) == parsed


@pytest.mark.parametrize("job_id", ["", "no-colon@1", None, ":s@1", "r:"])
def test_parse_job_id_rejects_unusable_ids(job_id):
    assert parse_job_id(job_id) is None


def _sim(**step_kw):
    sim = Sim(workflow(step("s", **step_kw), step("t", depends_on=["s"])))
    sim.start()
    return sim


def _unchanged(sim, job_id, status=JobStatus.SUCCEEDED):
    before = sim.run.to_dict()
    out = sim.result(job_id, status, result_ptr="redis://res:x")
    assert out.effects == [] and out.rows == [] and not out.changes
    assert sim.run.to_dict() == before


# ------------------------------------------------------------------- ignored results


def test_result_without_colon_is_ignored():
    _unchanged(_sim(), "s@1")


def test_result_for_another_run_is_ignored():
    _unchanged(_sim(), "run-2:s@1")


def test_result_for_unknown_step_is_ignored():
    _unchanged(_sim(), "run-1:ghost@1")


def test_result_for_terminal_run_is_ignored():
    sim = _sim()
    sim.run.status = RunStatus.CANCELLED
    _unchanged(sim, "run-1:s@1")


def test_stale_attempt_is_ignored():
    sim = _sim(retry=RetryConfig(max_retries=2))
    sim.fail("run-1:s@1")
    sim.advance(1)
    assert sim.job("s") == "run-1:s@2"
    _unchanged(sim, "run-1:s@1")
    assert sim.status("s") == StepStatus.RUNNING


def test_duplicate_of_a_terminal_step_is_ignored():
    sim = _sim()
    sim.succeed("run-1:s@1")
    _unchanged(sim, "run-1:s@1", JobStatus.FAILED)
    assert sim.status("s") == StepStatus.SUCCEEDED


def test_duplicate_while_in_backoff_is_ignored():
    sim = _sim(retry=RetryConfig(max_retries=2, initial_backoff_sec=10))
    sim.fail("run-1:s@1")
    assert sim.status("s") == StepStatus.PENDING
    _unchanged(sim, "run-1:s@1", JobStatus.FAILED)
    _unchanged(sim, "run-1:s@1", JobStatus.SUCCEEDED)
    assert sim.sr("s").attempts == 1


def test_attempts_is_max_of_recorded_and_job_suffix():
    wf = workflow(step("s"))
    run = WorkflowRun(id="run-1", workflow_id="wf1", status=RunStatus.RUNNING, steps={
        "s": StepRun(step_id="s", status=StepStatus.RUNNING, attempts=1, job_id="run-1:s@3")})
    sim = Sim(wf, run=run)
    sim.succeed("run-1:s@3")
    assert sim.sr("s").attempts == 3


# ---------------------------------------------------------------------------- success


def test_success_records_pointer_output_context_and_output_path():
    sim = Sim(workflow(step("s", output_path="results.deep.s")))
    sim.start()
    sim.run.context["results"] = "not a map"  # replaced by maps on the way
    sim.succeed("run-1:s@1", {"rows": 3})
    sr = sim.sr("s")
    assert sr.status == StepStatus.SUCCEEDED
    assert sr.output == "redis://res:run-1:s@1"
    assert sr.error == {}
    assert sim.run.context["steps"]["s"] == {"result_ptr": "redis://res:run-1:s@1",
                                             "output": {"rows": 3}}
    assert sim.run.context["results"] == {"deep": {"s": {"rows": 3}}}
    [ev] = sim.events("step_completed", "s")
    assert (ev.status, ev.result_ptr) == ("succeeded", "redis://res:run-1:s@1")


def test_raw_string_output_is_kept_as_is():
    sim = _sim()
    sim.succeed("run-1:s@1", "plain text")
    assert sim.run.context["steps"]["s"]["output"] == "plain text"


def test_large_output_keeps_only_the_pointer():
    sim = Sim(workflow(step("s", output_path="out")))
    sim.start()
    sim.succeed("run-1:s@1", too_large=True)
    assert sim.run.context["steps"]["s"] == {"result_ptr": "redis://res:run-1:s@1"}
    assert sim.run.context["out"] == "redis://res:run-1:s@1"


def test_output_is_visible_to_dependent_templates():
    sim = Sim(workflow(step("s"), step("t", depends_on=["s"],
                                       input={"n": "${steps.s.output.rows}"})))
    sim.start()
    sim.succeed("run-1:s@1", {"rows": 7})
    assert sim.dispatches[-1].payload == {"n": 7}


def test_output_violating_schema_fails_the_step():
    sim = _sim(output_schema={"type": "object", "required": ["rows"]})
    sim.succeed("run-1:s@1", {"cols": 1})
    assert sim.status("s") == StepStatus.FAILED
    [ev] = sim.events("step_output_invalid")
    assert (ev.step_id, ev.status) == ("s", "failed")
    assert "rows" in ev.message
    assert sim.status("t") is None
    assert sim.run.status == RunStatus.FAILED


def test_output_matching_schema_succeeds():
    sim = _sim(output_schema={"type": "object", "required": ["rows"]})
    sim.succeed("run-1:s@1", {"rows": 1})
    assert sim.status("s") == StepStatus.SUCCEEDED


# ---------------------------------------------------------------------------- retries


@pytest.mark.parametrize("status, final", [
    (JobStatus.FAILED, StepStatus.FAILED),
    (JobStatus.DENIED, StepStatus.FAILED),
    (JobStatus.TIMEOUT, StepStatus.TIMED_OUT),
])
def test_max_retries_two_means_exactly_three_attempts(status, final):
    sim = _sim(retry=RetryConfig(max_retries=2))
    for n in (1, 2, 3):
        sim.fail(f"run-1:s@{n}", f"err{n}", status)
        sim.advance(3600)
    assert sim.dispatched() == ["run-1:s@1", "run-1:s@2", "run-1:s@3"]
    assert sim.status("s") == final
    assert sim.sr("s").error == {"message": "err3"}
    expected = RunStatus.TIMED_OUT if final == StepStatus.TIMED_OUT else RunStatus.FAILED
    assert sim.run.status == expected


def test_no_retry_config_fails_at_once():
    sim = _sim()
    sim.fail("run-1:s@1", "nope")
    assert sim.status("s") == StepStatus.FAILED
    assert sim.sr("s").error == {"message": "nope"}


def test_retry_sets_pending_next_attempt_and_keeps_error():
    sim = _sim(retry=RetryConfig(max_retries=1, initial_backoff_sec=4))
    sim.fail("run-1:s@1", "flaky")
    sr = sim.sr("s")
    assert sr.status == StepStatus.PENDING
    assert sr.next_attempt_at == T0 + timedelta(seconds=4)
    assert sr.error == {"message": "flaky"}
    assert ArmTimer(T0 + timedelta(seconds=4), TimerKind.WAKE, "s") in sim.timers


@pytest.mark.parametrize("retry, attempts, expected", [
    (None, 1, 1),
    (RetryConfig(), 1, 1),                                       # initial default 1
    (RetryConfig(), 3, 4),                                       # multiplier default 2
    (RetryConfig(initial_backoff_sec=3, multiplier=3), 1, 3),
    (RetryConfig(initial_backoff_sec=3, multiplier=3), 3, 27),
    (RetryConfig(initial_backoff_sec=2, multiplier=1), 3, 8),    # multiplier ≤ 1 → 2
    (RetryConfig(initial_backoff_sec=2, multiplier=0.5), 2, 4),
    (RetryConfig(initial_backoff_sec=-5), 2, 2),                 # initial ≤ 0 → 1
    (RetryConfig(initial_backoff_sec=1, max_backoff_sec=10), 6, 10),  # capped
    (RetryConfig(initial_backoff_sec=1.5, multiplier=2), 1, 1),  # whole seconds
    (RetryConfig(initial_backoff_sec=1.5, multiplier=2), 2, 3),
    (RetryConfig(initial_backoff_sec=1, max_backoff_sec=2.5), 5, 2),
])
def test_backoff_table(retry, attempts, expected):
    assert backoff_seconds(retry, attempts) == expected


def test_retry_allowed_while_attempts_at_most_max_retries():
    r = RetryConfig(max_retries=2)
    assert [retry_allowed(r, n) for n in (1, 2, 3)] == [True, True, False]
    assert not retry_allowed(None, 1)
    assert not retry_allowed(RetryConfig(max_retries=0), 1)


def test_next_attempt_at_follows_the_backoff_table():
    retry = RetryConfig(max_retries=5, initial_backoff_sec=2, multiplier=3, max_backoff_sec=30)
    sim = _sim(retry=retry)
    waits = []
    for n in range(1, 5):
        sim.fail(f"run-1:s@{n}")
        waits.append((sim.sr("s").next_attempt_at - sim.now).total_seconds())
        sim.advance(waits[-1])
    assert waits == [2, 6, 18, 30]


def test_retry_is_dispatched_only_when_its_wake_timer_fires():
    sim = _sim(retry=RetryConfig(max_retries=1, initial_backoff_sec=10))
    sim.fail("run-1:s@1")
    sim.now = T0 + timedelta(seconds=5)
    sim.feed(TimerFired(TimerKind.WAKE, "s"))  # an early (stale) wake changes nothing
    assert sim.dispatched() == ["run-1:s@1"]
    sim.advance(4.9)
    assert sim.dispatched() == ["run-1:s@1"]
    sim.advance(0.1)
    assert sim.dispatched() == ["run-1:s@1", "run-1:s@2"]
    assert sim.dispatches[-1].request.job_id == "run-1:s@2"


def test_other_events_do_not_dispatch_a_retry_early():
    wf = workflow(step("s", retry=RetryConfig(max_retries=1, initial_backoff_sec=10)),
                  step("p"))
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:s@1")
    sim.succeed("run-1:p@1")  # runs a ready pass while s is backing off
    assert sim.dispatched() == ["run-1:s@1", "run-1:p@1"]


# ----------------------------------------------------------------- other statuses


def test_cancelled_result_cancels_the_step():
    sim = _sim(retry=RetryConfig(max_retries=3))
    sim.result("run-1:s@1", JobStatus.CANCELLED)
    assert sim.status("s") == StepStatus.CANCELLED
    assert sim.run.status == RunStatus.FAILED


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.UNSPECIFIED, JobStatus.PENDING])
def test_unexpected_status_fails_the_step(status):
    sim = _sim(retry=RetryConfig(max_retries=3))
    sim.result("run-1:s@1", status)
    assert sim.status("s") == StepStatus.FAILED
    assert sim.sr("s").error == {"message": f"unexpected status: {status.name}"}


def test_terminal_outcome_reports_step_finished():
    sim = _sim()
    sim.succeed("run-1:s@1")
    assert [(f.step_id, f.status) for f in sim.finished] == [("s", StepStatus.SUCCEEDED)]


# ----------------------------------------------------------------------- step timeout


def test_dispatch_arms_a_step_timeout():
    sim = _sim(timeout_sec=30)
    assert ArmTimer(T0 + timedelta(seconds=30), TimerKind.STEP_TIMEOUT, "s",
                    "run-1:s@1") in sim.timers


def test_step_timeout_cancels_the_job_and_counts_as_timeout():
    sim = _sim(timeout_sec=30)
    sim.advance(30)
    assert [c.job_id for c in sim.cancels] == ["run-1:s@1"]
    assert sim.status("s") == StepStatus.TIMED_OUT
    assert sim.run.status == RunStatus.TIMED_OUT


def test_step_timeout_is_retried_like_a_timeout_result():
    sim = _sim(timeout_sec=30, retry=RetryConfig(max_retries=1, initial_backoff_sec=5))
    sim.advance(30)
    assert sim.status("s") == StepStatus.PENDING
    sim.advance(5)
    assert sim.job("s") == "run-1:s@2"
    sim.advance(30)
    assert sim.status("s") == StepStatus.TIMED_OUT
    assert [c.job_id for c in sim.cancels] == ["run-1:s@1", "run-1:s@2"]


def test_step_timeout_for_an_old_job_does_nothing():
    sim = _sim(timeout_sec=30, retry=RetryConfig(max_retries=1, initial_backoff_sec=1))
    sim.fail("run-1:s@1")
    sim.advance(1)
    assert sim.job("s") == "run-1:s@2"
    out = sim.feed(TimerFired(TimerKind.STEP_TIMEOUT, "s", "run-1:s@1"))
    assert out.effects == [] and out.rows == [] and not out.changes
    assert sim.status("s") == StepStatus.RUNNING


def test_step_timeout_after_success_does_nothing():
    sim = _sim(timeout_sec=30)
    sim.succeed("run-1:s@1")
    sim.advance(60)
    assert sim.cancels == []
    assert sim.status("s") == StepStatus.SUCCEEDED


def test_output_load_error_with_schema_fails():
    sim = _sim(output_schema={"type": "object"})
    sim.result("run-1:s@1", JobStatus.SUCCEEDED, result_ptr="redis://res:run-1:s@1",
               output=LoadedOutput(error="payload expired"))
    assert sim.status("s") == StepStatus.FAILED
    assert "payload expired" in sim.sr("s").error["message"]


def test_a_failure_keeps_the_kind_the_worker_reported_in_its_error():
    sim = Sim(workflow(step("s", retry=RetryConfig(max_retries=1, initial_backoff_sec=5))))
    sim.start()
    sim.feed(ResultReceived(JobResult("run-1:s@1", JobStatus.FAILED, error_code="KeyError",
                                      error_message="'missing'")))
    assert sim.sr("s").error == {"message": "'missing'", "code": "KeyError"}  # in backoff
    sim.advance(5)
    sim.feed(ResultReceived(JobResult("run-1:s@2", JobStatus.FAILED, error_code="WorkerLost",
                                      error_message="worker lost: ...")))
    assert sim.sr("s").error == {"message": "worker lost: ...", "code": "WorkerLost"}
    assert sim.run.error == {"step_id": "s", "message": "worker lost: ...", "code": "WorkerLost"}


@pytest.mark.parametrize("output", [None, LoadedOutput(error="refused unread", loaded=False)])
@pytest.mark.parametrize("pointer", ["redis://secret:token", "redis://ctx:run-1:s@1",
                                     "wf:run:x", "redis://res:run-1:s@1 "])
def test_a_pointer_the_shell_did_not_read_at_is_checked_and_refused(output, pointer):
    """A foreign pointer fails the step, nothing of it enters the run; the core checks it
    unless the shell read the payload there (``LoadedOutput``: only a valid pointer is
    read), on the short way (``core.quick``) as on the general one."""
    sim = _sim()
    sim.result("run-1:s@1", JobStatus.SUCCEEDED, result_ptr=pointer, output=output)
    assert sim.status("s") == StepStatus.FAILED
    [ev] = sim.events("step_output_invalid")
    assert "refused" in ev.message
    assert "s" not in sim.run.context.get("steps", {})
    assert sim.status("t") is None


def test_a_pointer_the_shell_read_at_is_taken_as_read():
    sim = _sim()
    sim.result("run-1:s@1", JobStatus.SUCCEEDED, result_ptr="redis://res:run-1:s@1",
               output=LoadedOutput(value={"rows": 1}))
    assert sim.status("s") == StepStatus.SUCCEEDED
    assert sim.run.context["steps"]["s"] == {"result_ptr": "redis://res:run-1:s@1",
                                             "output": {"rows": 1}}
