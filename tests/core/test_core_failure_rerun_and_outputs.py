"""A failure stops a ready pass from dispatching more (no dispatch-then-cancel); a rerun of
a dry run is real and carries the output_path values of copied dependencies; the last
attempt's (even empty) error message; a fan-out parent's output; a notify alert whose
outcome was lost is published again on recovery."""

from __future__ import annotations

from harness import T0, Sim, step, workflow

from cordtrio.core.commands import rerun_from
from cordtrio.model import RetryConfig, RunStatus, StepStatus, StepType
from cordtrio.validation import collect_dependencies


def test_a_failure_in_a_pass_stops_later_steps_from_being_dispatched() -> None:
    wf = workflow(
        step("gate", type=StepType.CONDITION, condition=""),  # fails: expression required
        step("later"),
    )
    sim = Sim(wf)
    sim.start()
    assert sim.status("gate") == StepStatus.FAILED
    assert sim.dispatched() == [] and sim.cancels == []
    assert sim.run.status == RunStatus.FAILED


def test_rerun_without_dry_run_of_a_dry_run_is_real() -> None:
    wf = workflow(step("a"))
    sim = Sim(wf, dry_run=True, metadata={"dry_run": "true"}, labels={"dry_run": "true"})
    sim.start()
    sim.succeed("run-1:a@1")
    new = rerun_from(wf, sim.run, "", False, "run-2", T0, set())
    assert not new.dry_run
    assert "dry_run" not in new.metadata and "dry_run" not in new.labels


def test_rerun_carries_the_output_path_values_of_copied_dependencies() -> None:
    wf = workflow(step("fetch", output_path="data.fetched"), step("use", depends_on=["fetch"]))
    sim = Sim(wf)
    sim.start()
    sim.succeed("run-1:fetch@1", {"rows": 3})
    sim.fail("run-1:use@1")
    new = rerun_from(wf, sim.run, "use", False, "run-2", T0, collect_dependencies(wf, "use"))
    assert new.context["data"] == {"fetched": {"rows": 3}}
    assert new.context["data"] is not sim.run.context["data"]


def test_the_last_attempts_empty_error_message_replaces_the_previous_one() -> None:
    wf = workflow(step("a", retry=RetryConfig(max_retries=1)))
    sim = Sim(wf)
    sim.start()
    sim.fail("run-1:a@1", "first problem")
    sim.advance(1)
    sim.fail("run-1:a@2", "")
    assert sim.status("a") == StepStatus.FAILED
    assert sim.sr("a").error == {"message": ""}


def test_a_fanout_parent_output_is_its_childrens_outputs_in_index_order() -> None:
    wf = workflow(step("each", for_each="input.items", output_path="all"),
                  step("sum", depends_on=["each"], input={"values": "${steps.each.output}"}))
    sim = Sim(wf, run_input={"items": [1, 2, 3]})
    sim.start()
    for i in (2, 0, 1):
        sim.succeed(f"run-1:each[{i}]@1", {"n": i * 10})
    assert sim.run.context["steps"]["each"]["output"] == [{"n": 0}, {"n": 10}, {"n": 20}]
    assert sim.run.context["all"] == [{"n": 0}, {"n": 10}, {"n": 20}]
    assert sim.dispatches[-1].payload["values"] == [{"n": 0}, {"n": 10}, {"n": 20}]


def test_recovery_republishes_a_notify_alert_whose_outcome_was_lost() -> None:
    from cordtrio.core.events import Recover
    from cordtrio.model import WorkflowRun

    wf = workflow(step("tell", type=StepType.NOTIFY, input={"message": "hi ${input.who}"}))
    sim = Sim(wf, run_input={"who": "ann"})
    sim.start()
    assert [a.alert.message for a in sim.alerts] == ["hi ann"]
    # the engine died before the alert's outcome came back: a new one loads the stored run
    again = Sim(wf, run=WorkflowRun.from_dict(sim.run.to_dict()))
    again.feed(Recover())
    assert [a.alert.message for a in again.alerts] == ["hi ann"]
    again.answer_alerts()
    assert again.run.status == RunStatus.SUCCEEDED
