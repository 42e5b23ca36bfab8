"""What the hot-path speed-ups must not change: terminal statuses, the values effects carry,
and a for-each child's ``foreach_item`` encoding."""

from __future__ import annotations

import json
from datetime import timedelta

from harness import T0, Sim, step, workflow

from cordtrio.core.events import ArmTimer, Dispatch, StepFinished, TimerFired, TimerKind
from cordtrio.model import RunStatus, StepStatus
from cordtrio.protocol import JobRequest

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}  # SPEC §7


def test_is_terminal_is_true_exactly_for_the_terminal_statuses():
    for enum in (RunStatus, StepStatus):
        assert {s.value for s in enum if s.is_terminal} == TERMINAL, enum
        assert all(type(s.is_terminal) is bool for s in enum)
    assert len(RunStatus) == len(StepStatus) == 7  # ``is_terminal`` is not a member


def test_effects_compare_by_value_and_timers_stay_hashable():
    request = JobRequest(job_id="run-1:a@1", env={"run_id": "run-1"})
    assert Dispatch("a", "a", "run-1:a@1", request, {"x": 1}, "ctx:run-1:a@1") == Dispatch(
        step_id="a", target_id="a", job_id="run-1:a@1", request=JobRequest(
            job_id="run-1:a@1", env={"run_id": "run-1"}),
        payload={"x": 1}, context_key="ctx:run-1:a@1")
    assert StepFinished("a", StepStatus.FAILED) != StepFinished("a", StepStatus.CANCELLED)


def test_a_plain_jobs_shared_success_cannot_be_changed_by_a_run() -> None:
    """Every run of a workflow version hands the same ``StepFinished`` of a plain job's
    success to the shell: it is frozen, so no run (hook, driver) can change another's."""
    import dataclasses

    import pytest

    sim = Sim(workflow(step("a"), step("b", depends_on=["a"])))
    shared = sim.plan.plain["a"].succeeded
    sim.start()
    sim.succeed("run-1:a@1")
    assert any(e is shared for e in sim.effects)  # the one the shell was handed
    assert shared == StepFinished("a", StepStatus.SUCCEEDED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.status = StepStatus.FAILED  # type: ignore[misc]
    at = T0 + timedelta(seconds=5)
    assert len({ArmTimer(at, TimerKind.WAKE, "a"), ArmTimer(at, TimerKind.WAKE, "a")}) == 1
    assert len({TimerFired(TimerKind.WAKE, "a"), TimerFired(TimerKind.WAKE, "a")}) == 1


def test_foreach_item_is_the_items_json_like_json_dumps():
    items = [{"b": [1, 2.5, None, True]}, "é\u2028", 7]
    wf = workflow(step("fan", for_each="input.items"))
    sim = Sim(wf, run_input={"items": items})
    sim.start()
    envs = {d.target_id: d.request.env for d in sim.dispatches}
    assert [envs[f"fan[{i}]"]["foreach_item"] for i in range(3)] == [
        json.dumps(item) for item in items]
    assert [envs[f"fan[{i}]"]["foreach_index"] for i in range(3)] == ["0", "1", "2"]
