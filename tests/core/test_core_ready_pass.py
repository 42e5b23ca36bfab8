"""SPEC §3: the ready pass, and the engine-run step types (condition, approval, delay,
notify)."""

from __future__ import annotations

from datetime import timedelta

from harness import T0, Sim, step, workflow

from cordtrio.core.events import ArmTimer, Dispatch, PublishAlert, TimerKind
from cordtrio.model import RunStatus, StepStatus, StepType, WorkflowRun
from cordtrio.timeutil import format_ts

COND = StepType.CONDITION

# ------------------------------------------------------------------------ the pass itself


def test_condition_defined_after_its_dependent_unblocks_it_in_the_same_decide_call():
    wf = workflow(
        step("work", depends_on=["check"]),
        step("check", type=COND, condition="true"),
    )
    sim = Sim(wf)
    out = sim.start()
    assert sim.status("check") == StepStatus.SUCCEEDED
    assert [e.step_id for e in out.effects if isinstance(e, Dispatch)] == ["work"]


def test_chain_of_conditions_in_reverse_definition_order_completes_in_one_pass():
    wf = workflow(
        step("c3", type=COND, condition="true", depends_on=["c2"]),
        step("c2", type=COND, condition="true", depends_on=["c1"]),
        step("c1", type=COND, condition="true"),
    )
    sim = Sim(wf)
    sim.start()
    assert sim.run.status == RunStatus.SUCCEEDED


def test_first_pass_moves_run_pending_to_running_and_sets_started_at():
    sim = Sim(workflow(step("a")))
    assert sim.run.status == RunStatus.PENDING
    sim.start()
    assert sim.run.status == RunStatus.RUNNING
    assert sim.run.started_at == T0
    assert [(e.type, e.status) for e in sim.events("run_status")] == [("run_status", "running")]


def test_terminal_run_is_never_touched():
    for status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED,
                   RunStatus.TIMED_OUT):
        run = WorkflowRun(id="r", workflow_id="wf1", status=status)
        sim = Sim(workflow(step("a")), run=run)
        out = sim.start()
        assert out.effects == [] and out.rows == []
        assert not out.changes
        assert sim.run.steps == {}
        assert sim.run.status == status


def test_step_waits_until_every_dependency_succeeded():
    sim = Sim(workflow(step("a"), step("b"), step("c", depends_on=["a", "b"])))
    sim.start()
    assert sim.dispatched() == ["run-1:a@1", "run-1:b@1"]
    sim.succeed("run-1:a@1")
    assert sim.status("c") is None
    sim.succeed("run-1:b@1")
    assert sim.dispatched()[-1] == "run-1:c@1"


def test_failed_dependency_does_not_start_dependent():
    sim = Sim(workflow(step("a"), step("b", depends_on=["a"])))
    sim.start()
    sim.fail("run-1:a@1")
    assert sim.status("b") is None
    assert sim.run.status == RunStatus.FAILED


# ----------------------------------------------------------------------- condition gate


def test_false_gate_skips_step_as_succeeded_without_output_and_dependents_proceed():
    wf = workflow(
        step("a", condition="input.go == true"),
        step("b", depends_on=["a"]),
    )
    sim = Sim(wf, run_input={"go": False})
    sim.start()
    a = sim.sr("a")
    assert a.status == StepStatus.SUCCEEDED
    assert a.output is None and a.job_id == ""
    assert [e.step_id for e in sim.events("step_skipped")] == ["a"]
    assert sim.dispatched() == ["run-1:b@1"]


def test_true_gate_dispatches_the_step():
    sim = Sim(workflow(step("a", condition="input.go")), run_input={"go": True})
    sim.start()
    assert sim.dispatched() == ["run-1:a@1"]
    assert sim.events("step_skipped") == []


def test_gate_that_cannot_be_evaluated_fails_the_step():
    # Evaluation itself never raises in this expression language (missing keys are null);
    # the reachable error is an expression that does not compile, which validation would
    # reject at save time — so the step is built directly, bypassing it.
    wf = workflow(step("a", condition="input.x =="), validate=False)
    sim = Sim(wf)
    sim.start()
    assert sim.status("a") == StepStatus.FAILED
    assert "condition" in sim.sr("a").error["message"]
    assert sim.dispatches == []
    assert sim.run.status == RunStatus.FAILED


# ----------------------------------------------------------------------- condition steps


def test_condition_step_with_empty_expression_fails():
    sim = Sim(workflow(step("c", type=COND, condition="  ")))
    sim.start()
    assert sim.status("c") == StepStatus.FAILED
    assert sim.sr("c").error == {"message": "condition expression required"}
    assert [e.step_id for e in sim.events("step_condition_failed")] == ["c"]


def test_condition_value_is_stored_in_output_context_and_output_path():
    wf = workflow(step("c", type=COND, condition="input.n > 3", output_path="flags.big"))
    sim = Sim(wf, run_input={"n": 5})
    sim.start()
    assert sim.sr("c").output is True
    assert sim.run.context["steps"]["c"]["output"] is True
    assert sim.run.context["flags"] == {"big": True}
    [ev] = sim.events("step_condition_evaluated")
    assert ev.data == {"value": True}


def test_false_condition_value_still_succeeds_with_false_output():
    sim = Sim(workflow(step("c", type=COND, condition="input.n > 3")), run_input={"n": 1})
    sim.start()
    assert sim.status("c") == StepStatus.SUCCEEDED
    assert sim.sr("c").output is False


def test_condition_value_violating_output_schema_fails_the_step():
    wf = workflow(step("c", type=COND, condition="true", output_schema={"type": "string"}))
    sim = Sim(wf)
    sim.start()
    assert sim.status("c") == StepStatus.FAILED
    assert "output" in sim.sr("c").error["message"]
    assert "c" not in sim.run.context.get("steps", {})


def test_condition_value_checked_against_registry_output_schema():
    wf = workflow(step("c", type=COND, condition="true", output_schema_id="bool"))
    ok = Sim(wf, schemas={"bool": {"type": "boolean"}})
    ok.start()
    assert ok.status("c") == StepStatus.SUCCEEDED
    bad = Sim(wf, schemas={"bool": {"type": "integer"}})
    bad.start()
    assert bad.status("c") == StepStatus.FAILED


# ------------------------------------------------------------------------------ approval


def test_approval_step_waits_and_run_waits():
    sim = Sim(workflow(step("ok", type=StepType.APPROVAL), step("b", depends_on=["ok"])))
    sim.start()
    assert sim.status("ok") == StepStatus.WAITING
    assert sim.run.status == RunStatus.WAITING
    [ev] = sim.events("step_waiting")
    assert (ev.step_id, ev.message) == ("ok", "approval requested")
    assert sim.dispatches == []


# --------------------------------------------------------------------------------- delay


def _delay_sim(**kw):
    return Sim(workflow(step("d", type=StepType.DELAY, **kw), step("after", depends_on=["d"]),
                        validate=False))


def test_delay_sec_runs_the_step_with_next_attempt_at_and_a_wake_timer():
    sim = _delay_sim(delay_sec=30)
    sim.start()
    d = sim.sr("d")
    assert d.status == StepStatus.RUNNING
    assert d.next_attempt_at == T0 + timedelta(seconds=30)
    [ev] = sim.events("step_delay_started")
    assert ev.data["delay_ms"] == 30_000
    assert ArmTimer(T0 + timedelta(seconds=30), TimerKind.WAKE, "d") in sim.timers
    assert sim.dispatches == []


def test_delay_fires_then_succeeds_and_dependents_dispatch():
    sim = _delay_sim(delay_sec=30)
    sim.start()
    sim.advance(29)
    assert sim.status("d") == StepStatus.RUNNING
    sim.advance(1)
    assert sim.status("d") == StepStatus.SUCCEEDED
    assert sim.sr("d").completed_at == T0 + timedelta(seconds=30)
    assert [e.step_id for e in sim.events("step_delay_completed")] == ["d"]
    assert sim.dispatched() == ["run-1:after@1"]


def test_early_wake_does_not_end_a_delay():
    from cordtrio.core.events import TimerFired

    sim = _delay_sim(delay_sec=30)
    sim.start()
    sim.now = T0 + timedelta(seconds=10)
    sim.feed(TimerFired(TimerKind.WAKE, "d"))
    assert sim.status("d") == StepStatus.RUNNING


def test_delay_until_in_the_future_waits_until_then():
    sim = _delay_sim(delay_until=format_ts(T0 + timedelta(minutes=5)))
    sim.start()
    assert sim.sr("d").next_attempt_at == T0 + timedelta(minutes=5)
    assert sim.events("step_delay_started")[0].data["delay_ms"] == 300_000


def test_delay_until_in_the_past_completes_at_once():
    sim = _delay_sim(delay_until=format_ts(T0 - timedelta(minutes=5)))
    sim.start()
    assert sim.status("d") == StepStatus.SUCCEEDED
    assert sim.events("step_delay_completed")
    assert sim.dispatched() == ["run-1:after@1"]


def test_delay_sec_wins_over_delay_until():
    sim = _delay_sim(delay_sec=7, delay_until=format_ts(T0 + timedelta(hours=1)))
    sim.start()
    assert sim.sr("d").next_attempt_at == T0 + timedelta(seconds=7)


def test_delay_falls_back_to_timeout_sec():
    sim = _delay_sim(timeout_sec=12)
    sim.start()
    assert sim.sr("d").next_attempt_at == T0 + timedelta(seconds=12)


def test_zero_delay_succeeds_at_once():
    sim = _delay_sim()
    sim.start()
    assert sim.status("d") == StepStatus.SUCCEEDED
    assert [e.step_id for e in sim.events("step_delay_completed")] == ["d"]
    assert sim.events("step_delay_started") == []
    assert sim.dispatched() == ["run-1:after@1"]


def test_negative_delay_sec_fails_the_step():
    sim = _delay_sim(delay_sec=-1)
    sim.start()
    assert sim.status("d") == StepStatus.FAILED
    assert [e.step_id for e in sim.events("step_delay_failed")] == ["d"]
    assert sim.dispatches == []


def test_unparsable_delay_until_fails_the_step():
    sim = _delay_sim(delay_until="tomorrow-ish")
    sim.start()
    assert sim.status("d") == StepStatus.FAILED
    assert "delay_until" in sim.sr("d").error["message"]
    assert [e.step_id for e in sim.events("step_delay_failed")] == ["d"]


# -------------------------------------------------------------------------------- notify


def _notify(sim_input=None, **kw):
    sim = Sim(workflow(step("n", type=StepType.NOTIFY, **kw), step("b", depends_on=["n"]),
                       validate=False), run_input=sim_input)
    sim.start()
    return sim


def test_notify_publishes_alert_with_rendered_fields():
    sim = _notify({"who": "ops"}, input={
        "level": "warn", "message": "hello ${input.who}", "component": "billing", "code": "E42",
    })
    [alert] = sim.alerts
    assert isinstance(alert, PublishAlert)
    assert alert.step_id == "n"
    a = alert.alert
    assert (a.level, a.message, a.component, a.code) == ("WARN", "hello ops", "billing", "E42")


def test_notify_defaults_level_info_component_workflow_engine_message_name():
    sim = _notify(name="Nightly report")
    a = sim.alerts[0].alert
    assert (a.level, a.message, a.component, a.code) == (
        "INFO", "Nightly report", "workflow-engine", "")


def test_notify_message_falls_back_to_step_id():
    sim = _notify()
    assert sim.alerts[0].alert.message == "n"


def test_notify_succeeds_when_alert_published_and_dependents_proceed():
    sim = _notify(input={"message": "x"})
    assert sim.status("n") == StepStatus.RUNNING
    assert sim.dispatches == []
    sim.answer_alerts()
    assert sim.status("n") == StepStatus.SUCCEEDED
    assert [e.step_id for e in sim.events("step_event_emitted")] == ["n"]
    assert sim.dispatched() == ["run-1:b@1"]


def test_notify_publish_failure_fails_the_step():
    sim = _notify(input={"message": "x"})
    sim.answer_alerts(error="bus down")
    assert sim.status("n") == StepStatus.FAILED
    assert sim.sr("n").error == {"message": "bus down"}
    assert [e.step_id for e in sim.events("step_event_failed")] == ["n"]
    assert sim.dispatches == []


def test_notify_render_failure_fails_the_step_without_publishing():
    sim = _notify(input={"message": "oops ${input.x"})  # unterminated ${ (validation bypassed)
    assert sim.alerts == []
    assert sim.status("n") == StepStatus.FAILED
    assert [e.step_id for e in sim.events("step_event_failed")] == ["n"]
