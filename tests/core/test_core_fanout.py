"""SPEC §4: for-each fan-out."""

from __future__ import annotations

import json
import random

import pytest
from harness import Sim, step, workflow

from cordtrio.model import RetryConfig, RunStatus, StepStatus


def _fan(items, *, max_parallel=0, retry=None, extra=()):
    wf = workflow(
        step("fan", for_each="input.items", max_parallel=max_parallel, retry=retry),
        step("after", depends_on=["fan"]),
        *extra,
    )
    sim = Sim(wf, run_input={"items": items})
    sim.start()
    return sim


def _running_children(sim):
    return [c for c in sim.sr("fan").children.values() if c.status == StepStatus.RUNNING]


def test_null_for_each_is_an_empty_list_and_the_parent_succeeds_at_once():
    sim = _fan(None)
    assert sim.status("fan") == StepStatus.SUCCEEDED
    assert sim.sr("fan").children == {}
    assert sim.dispatched() == ["run-1:after@1"]


def test_empty_list_parent_succeeds_at_once():
    sim = _fan([])
    assert sim.status("fan") == StepStatus.SUCCEEDED
    assert sim.dispatched() == ["run-1:after@1"]


@pytest.mark.parametrize("value, name", [("abc", "string"), (3, "number"), ({"a": 1}, "object"),
                                         (True, "boolean")])
def test_non_list_for_each_fails_the_parent_naming_the_type(value, name):
    sim = _fan(value)
    assert sim.status("fan") == StepStatus.FAILED
    assert sim.sr("fan").error["message"] == f"for_each expression must return array, got {name}"
    assert sim.run.status == RunStatus.FAILED


def test_children_are_created_up_front_pending_with_their_item():
    sim = _fan(["a", "b", "c", "d"], max_parallel=1)
    children = sim.sr("fan").children
    assert list(children) == ["fan[0]", "fan[1]", "fan[2]", "fan[3]"]
    assert [c.item for c in children.values()] == ["a", "b", "c", "d"]
    assert [c.status for c in children.values()] == [
        StepStatus.RUNNING, StepStatus.PENDING, StepStatus.PENDING, StepStatus.PENDING]
    assert sim.status("fan") == StepStatus.RUNNING
    assert sim.dispatched() == ["run-1:fan[0]@1"]


def test_max_parallel_is_never_exceeded_and_dispatch_follows_index_order():
    rng = random.Random(7)
    sim = _fan(list(range(12)), max_parallel=3)
    assert len(_running_children(sim)) == 3
    while sim.running_jobs():
        job = rng.choice(sorted(sim.running_jobs()))
        sim.succeed(job)
        assert len(_running_children(sim)) <= 3
    fan_jobs = [j for j in sim.dispatched() if ":fan[" in j]
    assert fan_jobs == [f"run-1:fan[{i}]@1" for i in range(12)]
    assert sim.status("fan") == StepStatus.SUCCEEDED


def test_max_parallel_holds_when_children_finish_in_reverse_order():
    sim = _fan(list(range(6)), max_parallel=2)
    while sim.running_jobs():
        job = max(sim.running_jobs())  # always the highest running index first
        sim.succeed(job)
        assert len(_running_children(sim)) <= 2
    assert [j for j in sim.dispatched() if ":fan[" in j] == [
        f"run-1:fan[{i}]@1" for i in range(6)]


def test_max_parallel_zero_means_unlimited():
    sim = _fan(list(range(10)))
    assert len(_running_children(sim)) == 10


def test_child_job_carries_foreach_env_and_item_in_payload():
    sim = _fan([{"k": "v"}, 2])
    d0, d1 = sim.dispatches
    assert d0.request.env["foreach_index"] == "0"
    assert json.loads(d0.request.env["foreach_item"]) == {"k": "v"}
    assert d0.payload["item"] == {"k": "v"}
    assert d1.request.env["foreach_index"] == "1"
    assert json.loads(d1.request.env["foreach_item"]) == 2
    assert d0.job_id == "run-1:fan[0]@1"
    assert sim.sr("fan[0]").input == d0.payload
    assert sim.events("step_dispatched", "fan[1]")[0].data["foreach_index"] == 1


def test_child_template_sees_item():
    wf = workflow(step("fan", for_each="input.items", input={"x": "${item.n}"}))
    sim = Sim(wf, run_input={"items": [{"n": 5}]})
    sim.start()
    assert sim.dispatches[0].payload == {"x": 5, "item": {"n": 5}}


def test_failed_child_fails_parent_and_cancels_running_siblings():
    sim = _fan(list(range(5)), max_parallel=3)
    sim.fail("run-1:fan[1]@1", "bad item")
    assert sim.status("fan") == StepStatus.FAILED
    assert "fan[1]" in sim.sr("fan").error["message"]
    assert {c.job_id for c in sim.cancels} == {"run-1:fan[0]@1", "run-1:fan[2]@1"}
    kids = sim.sr("fan").children
    assert kids["fan[0]"].status == StepStatus.CANCELLED
    assert kids["fan[3]"].status == StepStatus.CANCELLED  # never dispatched
    assert sim.running_jobs() == set()
    assert sim.run.status == RunStatus.FAILED
    assert len(sim.cancels) == 2  # one JobCancel per sibling, not repeated by the run


def test_child_failure_after_its_retries_fails_parent():
    sim = _fan(["x"], retry=RetryConfig(max_retries=1))
    sim.fail("run-1:fan[0]@1")
    assert sim.status("fan") == StepStatus.RUNNING
    assert sim.status("fan[0]") == StepStatus.PENDING
    sim.advance(1)
    assert sim.job("fan[0]") == "run-1:fan[0]@2"
    sim.fail("run-1:fan[0]@2")
    assert sim.status("fan") == StepStatus.FAILED


def test_child_retries_count_toward_max_parallel():
    sim = _fan(list(range(4)), max_parallel=2, retry=RetryConfig(max_retries=3,
                                                                initial_backoff_sec=5))
    sim.fail("run-1:fan[0]@1")  # fan[0] backs off; its slot goes to fan[2]
    assert sim.running_jobs() == {"run-1:fan[1]@1", "run-1:fan[2]@1"}
    sim.advance(5)  # backoff over, but both slots are taken
    assert len(_running_children(sim)) == 2
    assert sim.status("fan[0]") == StepStatus.PENDING
    sim.succeed("run-1:fan[2]@1")  # a slot frees: the retry (lowest index) goes first
    assert sim.running_jobs() == {"run-1:fan[1]@1", "run-1:fan[0]@2"}
    while sim.running_jobs():
        sim.succeed(min(sim.running_jobs()))
        assert len(_running_children(sim)) <= 2
    assert sim.status("fan") == StepStatus.SUCCEEDED


def test_all_children_succeeded_parent_succeeds_and_dependents_dispatch():
    sim = _fan(["a", "b"])
    sim.succeed("run-1:fan[1]@1", {"r": 1})
    assert sim.status("fan") == StepStatus.RUNNING
    sim.succeed("run-1:fan[0]@1", {"r": 0})
    assert sim.status("fan") == StepStatus.SUCCEEDED
    assert sim.dispatched()[-1] == "run-1:after@1"
    steps = sim.run.context["steps"]
    assert steps["fan[0]"]["output"] == {"r": 0}
    assert steps["fan[1]"]["output"] == {"r": 1}


def test_failed_child_cancels_siblings_even_while_the_run_stays_open_for_a_handler():
    wf = workflow(step("fan", for_each="input.xs", on_error="h"), step("h"))
    sim = Sim(wf, run_input={"xs": [0, 1, 2]})
    sim.start()
    sim.fail("run-1:fan[0]@1")
    assert sim.run.status == RunStatus.RUNNING  # the handler is running
    assert sorted(c.job_id for c in sim.cancels) == ["run-1:fan[1]@1", "run-1:fan[2]@1"]
    assert sim.running_jobs() == {"run-1:h@1"}


def test_child_step_timeout_cancels_that_child_job_and_retries_it():
    from cordtrio.model import RetryConfig as Retry

    wf = workflow(step("fan", for_each="input.xs", timeout_sec=10,
                       retry=Retry(max_retries=1, initial_backoff_sec=1)))
    sim = Sim(wf, run_input={"xs": [0, 1]})
    sim.start()
    sim.succeed("run-1:fan[1]@1")
    sim.advance(10)
    assert [c.job_id for c in sim.cancels] == ["run-1:fan[0]@1"]
    sim.advance(1)
    assert sim.job("fan[0]") == "run-1:fan[0]@2"
    sim.advance(10)
    assert sim.status("fan[0]") == StepStatus.TIMED_OUT
    assert sim.status("fan") == StepStatus.FAILED


def test_child_dispatch_failure_fails_parent_and_cancels_siblings():
    from cordtrio.core.events import DispatchFailed

    sim = _fan([0, 1, 2])
    sim.feed(DispatchFailed("fan[1]", "run-1:fan[1]@1", "publish failed"))
    assert sim.status("fan[1]") == StepStatus.FAILED
    assert sim.status("fan") == StepStatus.FAILED
    assert sorted(c.job_id for c in sim.cancels) == ["run-1:fan[0]@1", "run-1:fan[2]@1"]
