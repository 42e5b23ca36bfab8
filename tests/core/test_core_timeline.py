"""SPEC §10: the timeline events a run records, and their fields."""

from __future__ import annotations

from datetime import timedelta

from harness import T0, Sim, step, workflow

from cordtrio.core.events import Approve
from cordtrio.model import RetryConfig, RunStatus, StepType, TimelineEvent
from cordtrio.protocol import JobStatus

SPEC_TYPES = {
    "step_dispatched", "step_completed", "step_output_invalid", "step_condition_evaluated",
    "step_condition_failed", "step_skipped", "step_waiting", "step_approved", "step_rejected",
    "step_delay_started", "step_delay_completed", "step_delay_failed", "step_event_emitted",
    "step_event_failed", "step_error_handler_started", "run_status",
}


def _happy_run():
    wf = workflow(
        step("check", type=StepType.CONDITION, condition="input.go"),
        step("fetch", depends_on=["check"], retry=RetryConfig(max_retries=1)),
        step("fan", for_each="input.xs", depends_on=["fetch"]),
        step("ok", type=StepType.APPROVAL, depends_on=["fan"]),
        step("wait", type=StepType.DELAY, delay_sec=10, depends_on=["ok"]),
        step("tell", type=StepType.NOTIFY, depends_on=["wait"]),
        step("skip", condition="false"),
    )
    sim = Sim(wf, run_input={"go": True, "xs": [1]})
    sim.start()
    sim.fail("run-1:fetch@1", "flaky")
    sim.advance(1)
    sim.succeed("run-1:fetch@2", {"a": 1})
    sim.succeed("run-1:fan[0]@1")
    sim.feed(Approve("ok"))
    sim.advance(10)
    sim.answer_alerts()
    return sim


def _fields(ev):
    return (ev.type, ev.step_id, ev.job_id, ev.status, ev.result_ptr, ev.message, ev.data)


def test_every_event_names_the_run_and_workflow_and_is_stamped_with_decide_time():
    sim = _happy_run()
    assert sim.timeline
    for ev in sim.timeline:
        assert (ev.run_id, ev.workflow_id) == ("run-1", "wf1")
        assert T0 <= ev.time <= T0 + timedelta(seconds=11)
    assert sim.events("step_delay_completed")[0].time == T0 + timedelta(seconds=11)


def test_representative_run_records_the_expected_events_in_order():
    sim = _happy_run()
    ptr2 = "redis://res:run-1:fetch@2"
    expected = [
        ("run_status", "", "", "running", "", "", {}),
        ("step_condition_evaluated", "check", "", "succeeded", "", "", {"value": True}),
        ("step_dispatched", "fetch", "run-1:fetch@1", "running", "", "",
         {"context_ptr": "redis://ctx:run-1:fetch@1"}),
        ("step_skipped", "skip", "", "succeeded", "", "condition evaluated to false", {}),
        ("step_retry_scheduled", "fetch", "run-1:fetch@1", "pending", "", "flaky",
         {"attempt": 1, "backoff_sec": 1}),
        ("step_dispatched", "fetch", "run-1:fetch@2", "running", "", "",
         {"context_ptr": "redis://ctx:run-1:fetch@2"}),
        ("step_completed", "fetch", "run-1:fetch@2", "succeeded", ptr2, "", {}),
        ("step_dispatched", "fan[0]", "run-1:fan[0]@1", "running", "", "",
         {"context_ptr": "redis://ctx:run-1:fan[0]@1", "foreach_index": 0}),
        ("step_completed", "fan[0]", "run-1:fan[0]@1", "succeeded",
         "redis://res:run-1:fan[0]@1", "", {}),
        ("step_completed", "fan", "", "succeeded", "", "", {}),
        ("step_waiting", "ok", "", "waiting", "", "approval requested", {}),
        ("run_status", "", "", "waiting", "", "", {}),
        ("step_approved", "ok", "", "succeeded", "", "", {}),
        ("step_delay_started", "wait", "", "running", "", "", {"delay_ms": 10000}),
        ("run_status", "", "", "running", "", "", {}),
        ("step_delay_completed", "wait", "", "succeeded", "", "", {}),
        ("step_event_emitted", "tell", "", "succeeded", "", "", {}),
        ("run_status", "", "", "succeeded", "", "", {}),
    ]
    assert [_fields(ev) for ev in sim.timeline] == expected


def _first(type_, *steps, drive=None):
    sim = Sim(workflow(*steps, validate=False))
    sim.start()
    if drive is not None:
        drive(sim)
    [ev] = sim.events(type_)
    return ev


def test_failure_events_carry_step_status_and_message():
    ev = _first("step_condition_failed", step("c", type=StepType.CONDITION, condition=""))
    assert _fields(ev)[:6] == ("step_condition_failed", "c", "", "failed", "",
                               "condition expression required")
    ev = _first("step_delay_failed", step("d", type=StepType.DELAY, delay_until="nope"))
    assert (ev.step_id, ev.status) == ("d", "failed") and "delay_until" in ev.message
    ev = _first("step_event_failed", step("n", type=StepType.NOTIFY),
                drive=lambda s: s.answer_alerts(error="bus down"))
    assert (ev.step_id, ev.status, ev.message) == ("n", "failed", "bus down")
    ev = _first("step_rejected", step("g", type=StepType.APPROVAL),
                drive=lambda s: s.feed(Approve("g", approved=False)))
    assert (ev.step_id, ev.status) == ("g", "failed")


def test_output_invalid_and_handler_started_events():
    sim = Sim(workflow(step("out", output_schema={"type": "object", "required": ["x"]},
                            on_error="h"), step("h")))
    sim.start()
    sim.succeed("run-1:out@1", {"y": 1})
    [inv] = sim.events("step_output_invalid")
    assert (inv.step_id, inv.job_id, inv.status, inv.result_ptr) == (
        "out", "run-1:out@1", "failed", "redis://res:run-1:out@1")
    assert "x" in inv.message
    [handler] = sim.events("step_error_handler_started")
    assert (handler.step_id, handler.status, handler.data) == (
        "h", "pending", {"failed_step": "out"})
    assert {ev.type for ev in sim.timeline} <= SPEC_TYPES


def test_step_completed_for_a_failure_carries_the_error_message():
    sim = Sim(workflow(step("a")))
    sim.start()
    sim.fail("run-1:a@1", "exit 3", JobStatus.DENIED)
    [ev] = sim.events("step_completed")
    assert (ev.step_id, ev.job_id, ev.status, ev.message) == ("a", "run-1:a@1", "failed",
                                                              "exit 3")
    last = sim.timeline[-1]
    assert (last.type, last.status, last.step_id) == ("run_status", "failed", "")


def _made_as_init_makes(obj: object) -> None:
    """``obj``, made by the core without its ``__init__``, has every field of its class
    set (in field order, and nothing else, for a class with a ``__dict__``): what
    ``__init__`` would make."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(obj)]  # type: ignore[arg-type]
    values = {name: getattr(obj, name) for name in names}  # a slot left unset raises
    assert type(obj)(**values) == obj
    if hasattr(obj, "__dict__"):
        assert list(vars(obj)) == names, type(obj).__name__


def test_objects_the_core_makes_at_once_are_what_their_init_makes() -> None:
    """The hot path makes its rows, StepRuns, ``Dispatch`` effects, Tx, RunChanges and a
    new run's Frontier without their ``__init__`` (and shares a plain job's frozen
    ``StepFinished`` of success); each has exactly its class's fields."""
    from cordtrio.core.events import Dispatch, StepFinished
    from cordtrio.core.state import Tx
    from cordtrio.ports import RunChanges

    wf = workflow(step("a", timeout_sec=5), step("b", depends_on=["a"]),
                  step("c", depends_on=["b"], input={"x": "${steps.b.output.v}"}))
    sim = Sim(wf, run_input={"k": 1})
    sim.start()
    sim.succeed("run-1:a@1", {"v": 1})
    sim.succeed("run-1:b@1", {"v": 2})
    kinds = set()
    for effect in [*sim.timeline, *sim.effects]:
        if isinstance(effect, (TimelineEvent, Dispatch, StepFinished)):
            _made_as_init_makes(effect)
            kinds.add(type(effect))
    assert kinds == {TimelineEvent, Dispatch, StepFinished}
    for sr in sim.run.steps.values():
        _made_as_init_makes(sr)
    assert RunChanges.none_yet(RunStatus.RUNNING) == RunChanges(
        previous_status=RunStatus.RUNNING)
    from cordtrio.core.frontier import Frontier

    plan = sim.plan
    front = Frontier.new(plan)
    _made_as_init_makes(front)
    assert front == Frontier(plan=plan, live=set(plan.roots), seen=[None] * len(plan.order),
                             unfinished=len(plan.order) - len(plan.handlers))
    tx = Tx(sim.plan, sim.state, sim.now)
    assert (tx.effects, tx.changes) == ([], RunChanges(previous_status=sim.run.status))
    assert (tx.plan, tx.state, tx.now, tx.run) == (sim.plan, sim.state, sim.now, sim.run)


def test_rows_without_data_share_one_read_only_empty_map() -> None:
    """The core gives every row without data the one ``NO_DATA``: read-only (no row can
    change another's), empty and falsy as ``{}`` is, left out of the row's document; a row
    with data has a map of its own."""
    import json

    import pytest

    from cordtrio.model import NO_DATA

    sim = Sim(workflow(step("a"), step("fan", for_each="input.xs", depends_on=["a"])),
              run_input={"xs": [1]})
    sim.start()
    sim.succeed("run-1:a@1")
    sim.succeed("run-1:fan[0]@1")
    bare = [ev for ev in sim.timeline if not ev.data]
    assert {ev.type for ev in bare} >= {"step_completed", "run_status"}
    for ev in bare:
        assert ev.data is NO_DATA, ev
        assert "data" not in ev.to_dict()
        json.dumps(ev.to_dict())
    with pytest.raises(TypeError):
        bare[0].data["x"] = 1  # type: ignore[index]
    assert NO_DATA == {} and not NO_DATA
    [fan] = sim.events("step_dispatched", "fan[0]")
    assert type(fan.data) is dict and fan.data["foreach_index"] == 0
    with_data = [ev.data for ev in sim.timeline if ev.data]
    assert len({id(d) for d in with_data}) == len(with_data)


def test_the_shared_empty_data_is_an_empty_dict_to_every_reader_and_copies_plainly() -> None:
    """A store or reader handed a row may treat its shared empty data as any empty
    ``dict``: encode it, copy it, pickle it, ``asdict`` its row; every copy is a plain,
    changeable ``{}``; the shared map itself refuses every change."""
    import copy
    import dataclasses
    import json
    import pickle

    import pytest

    from cordtrio.model import NO_DATA, TimelineEvent

    row = TimelineEvent(type="run_status", run_id="r", data=NO_DATA)
    assert isinstance(NO_DATA, dict) and json.dumps(NO_DATA) == "{}"
    copies = [copy.copy(NO_DATA), copy.deepcopy(NO_DATA), pickle.loads(pickle.dumps(NO_DATA)),
              dataclasses.asdict(row)["data"], copy.deepcopy(row).data,
              pickle.loads(pickle.dumps(row)).data]
    for made in copies:
        assert type(made) is dict and made == {} and made is not NO_DATA
        made["x"] = 1  # a copy is the holder's own
    for change in (lambda: NO_DATA.__setitem__("x", 1), lambda: NO_DATA.update(x=1),
                   lambda: NO_DATA.setdefault("x", 1), lambda: NO_DATA.pop("x", None),
                   NO_DATA.clear, NO_DATA.popitem, lambda: NO_DATA.__delitem__("x")):
        with pytest.raises(TypeError):
            change()
    shared = NO_DATA
    with pytest.raises(TypeError):
        shared |= {"x": 1}
    assert NO_DATA == {} and NO_DATA | {"x": 1} == {"x": 1}
