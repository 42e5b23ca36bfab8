"""The document dataclasses: defaults, enums, dict round trips and loading definition files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cordtrio import run_doc
from cordtrio.errors import ValidationError
from cordtrio.model import (
    RetryConfig,
    RunStatus,
    Step,
    StepMeta,
    StepRun,
    StepStatus,
    StepType,
    TimelineEvent,
    Workflow,
    WorkflowRun,
    load_workflow,
)

T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def full_workflow() -> Workflow:
    return Workflow(
        id="etl",
        org_id="org-1",
        team_id="team-a",
        name="ETL",
        description="fetch, check, load",
        version="3",
        timeout_sec=600,
        steps={
            "fetch": Step(
                id="fetch",
                name="Fetch",
                topic="job.fetch",
                input={"url": "${input.url}", "opts": {"n": 3, "tags": ["a", "b"]}},
                input_schema={"type": "object"},
                output_path="data.fetched",
                output_schema={"type": "object"},
                meta=StepMeta(actor_id="u1", actor_type="human", risk_tags=["pii"],
                              requires=["net"], labels={"k": "v"}, capability="fetch"),
                retry=RetryConfig(max_retries=3, initial_backoff_sec=0.5, max_backoff_sec=30,
                                  multiplier=2),
                timeout_sec=12.5,
                on_error="cleanup",
                route_labels={"zone": "eu"},
            ),
            "check": Step(id="check", type=StepType.CONDITION, depends_on=["fetch"],
                          condition="steps.fetch.output.ok == true"),
            "each": Step(id="each", worker_id="w1", depends_on=["check"],
                         for_each="steps.fetch.output.items", max_parallel=2,
                         input_schema_id="item.v1", output_schema_id="out.v1"),
            "gate": Step(id="gate", type=StepType.APPROVAL, depends_on=["each"]),
            "pause": Step(id="pause", type=StepType.DELAY, delay_sec=5,
                          delay_until="2030-01-01T00:00:00Z", depends_on=["gate"]),
            "tell": Step(id="tell", type=StepType.NOTIFY, input={"message": "done"},
                         depends_on=["pause"]),
            "cleanup": Step(id="cleanup", topic="job.cleanup"),
        },
        config={"retries": {"default": 1}},
        input_schema={"type": "object", "required": ["url"]},
        parameters=[{"name": "url", "type": "string"}],
        created_by="alice",
        created_at=T0,
        updated_at=T0 + timedelta(hours=1),
    )


def full_run() -> WorkflowRun:
    child0 = StepRun(step_id="each[0]", status=StepStatus.SUCCEEDED, started_at=T0,
                     completed_at=T0 + timedelta(seconds=2), attempts=1, input={"item": 1},
                     output={"ok": True}, job_id="r1:each[0]@1", item=1)
    child1 = StepRun(step_id="each[1]", status=StepStatus.PENDING, item={"x": [1, 2]},
                     next_attempt_at=T0 + timedelta(seconds=9), attempts=2,
                     error={"message": "boom"})
    return WorkflowRun(
        id="r1",
        workflow_id="etl",
        org_id="org-1",
        team_id="team-a",
        input={"url": "http://x", "priority": "critical"},
        context={"steps": {"fetch": {"result_ptr": "redis://res:j", "output": {"ok": True}}}},
        status=RunStatus.RUNNING,
        started_at=T0,
        output={"a": 1},
        error={"message": "nope"},
        steps={
            "fetch": StepRun(step_id="fetch", status=StepStatus.SUCCEEDED, started_at=T0,
                             completed_at=T0 + timedelta(seconds=1), attempts=1,
                             output="redis://res:r1:fetch@1", job_id="r1:fetch@1"),
            "check": StepRun(step_id="check", status=StepStatus.SUCCEEDED, output=False),
            "each": StepRun(step_id="each", status=StepStatus.RUNNING,
                            children={"each[0]": child0, "each[1]": child1}),
        },
        total_cost=1.25,
        triggered_by="api",
        created_at=T0,
        updated_at=T0 + timedelta(minutes=1),
        labels={"env": "prod"},
        metadata={"rerun_of": "r0"},
        idempotency_key="idem-1",
        rerun_of="r0",
        rerun_step="fetch",
        dry_run=True,
    )


# ---------------------------------------------------------------------------- defaults, enums


def test_defaults() -> None:
    step = Step(id="a", topic="job.x")
    assert step.id == "a" and step.topic == "job.x"
    assert Step().type == StepType.WORKER
    assert Step().depends_on == [] and Step().input == {} and Step().retry is None
    assert StepRun().status == StepStatus.PENDING
    assert WorkflowRun().status == RunStatus.PENDING and WorkflowRun().dry_run is False
    assert Workflow().steps == {}
    # Mutable defaults are not shared between instances.
    a, b = Step(), Step()
    a.depends_on.append("x")
    assert b.depends_on == []


def test_enums_compare_to_strings() -> None:
    assert RunStatus.TIMED_OUT == "timed_out"
    assert StepStatus.SUCCEEDED == "succeeded"
    assert StepType.WORKER == "worker"
    assert RunStatus("cancelled") is RunStatus.CANCELLED
    assert {RunStatus.FAILED: 1}["failed"] == 1
    assert RunStatus.SUCCEEDED.is_terminal and not RunStatus.WAITING.is_terminal
    assert StepStatus.TIMED_OUT.is_terminal and not StepStatus.RUNNING.is_terminal


def test_worker_like_types() -> None:
    engine = {StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY}
    for kind in StepType:
        assert kind.is_worker_like == (kind not in engine)


# ---------------------------------------------------------------------------- round trips


def test_workflow_round_trip() -> None:
    wf = full_workflow()
    d = wf.to_dict()
    assert Workflow.from_dict(d) == wf
    # The document is plain JSON with RFC 3339 timestamps and string enums.
    again = json.loads(json.dumps(d))
    assert Workflow.from_dict(again) == wf
    assert again["created_at"] == "2024-05-01T12:30:15.123456Z"
    assert again["steps"]["check"]["type"] == "condition"


def test_step_round_trip_with_empty_retry_and_meta() -> None:
    step = Step(id="a", topic="t", retry=RetryConfig(), meta=StepMeta())
    assert Step.from_dict(step.to_dict()) == step
    assert Step.from_dict(Step(id="a", topic="t").to_dict()).retry is None


def test_to_dict_omits_empty_values() -> None:
    assert Step(id="a", topic="job.x").to_dict() == {"id": "a", "type": "worker",
                                                     "topic": "job.x"}


def test_run_round_trip_with_children_and_timestamps() -> None:
    run = full_run()
    d = json.loads(json.dumps(run.to_dict()))
    back = WorkflowRun.from_dict(d)
    assert back == run
    assert back.steps["each"].children["each[1]"].next_attempt_at == T0 + timedelta(seconds=9)
    assert back.steps["check"].output is False
    assert d["status"] == "running"


def test_timestamps_normalise_to_utc() -> None:
    local = datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    back = StepRun.from_dict(StepRun(step_id="s", started_at=local).to_dict())
    assert back.started_at == local
    assert back.started_at is not None and back.started_at.utcoffset() == timedelta(0)
    assert StepRun(step_id="s", started_at=local).to_dict()["started_at"] == (
        "2024-01-01T12:00:00Z"
    )


def test_timeline_event_round_trip() -> None:
    ev = TimelineEvent(time=T0, type="step_completed", run_id="r1", workflow_id="etl",
                       step_id="fetch", job_id="r1:fetch@1", status="succeeded",
                       result_ptr="redis://res:r1:fetch@1", message="ok",
                       data={"attempt": 1, "nested": {"a": [1, 2]}})
    assert TimelineEvent.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev
    assert TimelineEvent.from_dict(TimelineEvent().to_dict()) == TimelineEvent()


def test_from_dict_accepts_cordum_shapes() -> None:
    wf = Workflow.from_dict({
        "id": "w",
        "steps": {
            "a": {"topic": "job.a", "type": "WORKER"},
            "b": {"topic": "job.b", "depends_on": "a", "max_parallel": "3", "retry": {}},
        },
    })
    assert wf.steps["a"].id == "a"  # filled from the key
    assert wf.steps["a"].type is StepType.WORKER
    assert wf.steps["b"].depends_on == ["a"]
    assert wf.steps["b"].max_parallel == 3
    assert wf.steps["b"].retry == RetryConfig()


def test_from_dict_step_list_form() -> None:
    wf = Workflow.from_dict({"id": "w", "steps": [{"id": "a", "topic": "t"},
                                                  {"id": "b", "topic": "t"}]})
    assert list(wf.steps) == ["a", "b"]
    with pytest.raises(ValidationError, match=r"steps\[1\] repeats step id 'a'"):
        Workflow.from_dict({"id": "w", "steps": [{"id": "a", "topic": "t"},
                                                 {"id": "a", "topic": "u"}]})
    with pytest.raises(ValidationError, match="no id"):
        Workflow.from_dict({"id": "w", "steps": [{"topic": "t"}]})


def test_step_key_mismatch_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"'a'.*'b'"):
        Workflow.from_dict({"id": "w", "steps": {"a": {"id": "b", "topic": "t"}}})


def test_unknown_step_type_names_the_step() -> None:
    with pytest.raises(ValidationError, match=r"step 'resize'.*'teleport'"):
        Workflow.from_dict({"id": "w", "steps": {"resize": {"type": "teleport"}}})


def test_bad_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"step 'a'.*timeout_sec"):
        Step.from_dict({"timeout_sec": "soon"}, "a")
    with pytest.raises(ValidationError, match=r"step 'a'.*input"):
        Step.from_dict({"input": [1, 2]}, "a")
    with pytest.raises(ValidationError, match=r"run 'r'.*status"):
        WorkflowRun.from_dict({"id": "r", "status": "exploded"})
    with pytest.raises(ValidationError, match="created_at"):
        Workflow.from_dict({"id": "w", "created_at": "yesterday"})


# ---------------------------------------------------------------------------- files


YAML_DEF = """\
id: image-pipeline
name: Image pipeline
org_id: acme
timeout_sec: 3600
input_schema:
  type: object
  required: [images]
steps:
  list:
    type: worker
    topic: job.images.list
    input:
      bucket: ${input.bucket}
  resize:
    topic: job.images.resize
    depends_on: [list]
    for_each: steps.list.output.images
    max_parallel: 4
    retry:
      max_retries: 2
      initial_backoff_sec: 1
      multiplier: 2
  review:
    type: approval
    depends_on: [resize]
  later:
    type: delay
    depends_on: [review]
    delay_until: 2030-01-01T00:00:00Z
  announce:
    type: notify
    depends_on: [later]
    input:
      level: info
      message: "resized ${length(steps.list.output.images)} images"
      when: 2024-05-01
"""


def test_load_yaml_workflow(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML_DEF, encoding="utf-8")
    wf = load_workflow(path)
    assert wf.id == "image-pipeline" and wf.org_id == "acme" and wf.timeout_sec == 3600
    assert list(wf.steps) == ["list", "resize", "review", "later", "announce"]
    assert wf.steps["list"].input == {"bucket": "${input.bucket}"}
    resize = wf.steps["resize"]
    assert resize.id == "resize" and resize.type is StepType.WORKER
    assert resize.depends_on == ["list"] and resize.max_parallel == 4
    assert resize.retry == RetryConfig(max_retries=2, initial_backoff_sec=1, multiplier=2)
    assert wf.steps["review"].type is StepType.APPROVAL
    # Unquoted YAML timestamps stay the strings that were written (JSON-compatible).
    assert wf.steps["later"].delay_until == "2030-01-01T00:00:00Z"
    assert wf.steps["announce"].input["when"] == "2024-05-01"
    json.dumps(wf.to_dict())


def test_load_json_workflow(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(full_workflow().to_dict()), encoding="utf-8")
    assert load_workflow(path) == full_workflow()
    assert load_workflow(str(path)) == full_workflow()


def test_load_yml_extension(tmp_path: Path) -> None:
    path = tmp_path / "wf.yml"
    path.write_text("id: w\nsteps:\n  a: {topic: job.a}\n", encoding="utf-8")
    assert load_workflow(path).steps["a"] == Step(id="a", topic="job.a")


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("bad.yaml", "id: w\nsteps: [unclosed\n", "line 3, column 1"),
        ("bad.json", "{not json", "line 1, column 2"),
        ("list.yaml", "- a\n- b\n", "top level must be a mapping"),
        ("type.yaml", "id: w\nsteps:\n  a: {type: teleport}\n", "teleport"),
    ],
)
def test_malformed_file_names_the_file(tmp_path: Path, name: str, text: str,
                                       problem: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        load_workflow(path)
    assert name in str(info.value) and problem in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"missing\.yaml"):
        load_workflow(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------- property

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=5), json_values, max_size=3)
aware_times = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def step_runs(children: st.SearchStrategy[dict[str, StepRun]]) -> st.SearchStrategy[StepRun]:
    return st.builds(
        StepRun,
        step_id=st.text(min_size=1, max_size=8),
        status=st.sampled_from(StepStatus),
        started_at=aware_times,
        completed_at=aware_times,
        next_attempt_at=aware_times,
        attempts=st.integers(0, 50),
        input=json_objects,
        output=json_values,
        error=json_objects,
        job_id=st.text(max_size=12),
        item=json_values,
        children=children,
    )


def _keyed(runs: list[StepRun]) -> dict[str, StepRun]:
    # A child is stored under its own step id (``<step>[<i>]``), as the engine does.
    return {run.step_id: run for run in runs}


step_run_trees = step_runs(
    st.lists(step_runs(st.just({})), max_size=3).map(_keyed)
)


@given(step_run_trees)
def test_step_run_round_trip_property(run: StepRun) -> None:
    d: Any = run.to_dict()
    assert StepRun.from_dict(d) == run
    assert StepRun.from_dict(json.loads(json.dumps(d))) == run


# ---------------------------------------------------------------------------- clones


def test_clones_equal_a_dict_round_trip_and_share_nothing_mutable() -> None:
    run, wf = full_run(), full_workflow()
    run_copy, wf_copy = run.clone(), wf.clone()
    assert run_copy == WorkflowRun.from_dict(run.to_dict()) == run
    assert wf_copy == Workflow.from_dict(wf.to_dict()) == wf
    assert list(run_copy.steps["each"].children) == ["each[0]", "each[1]"]
    assert list(wf_copy.steps) == list(wf.steps)

    run_copy.input["url"] = "changed"
    run_copy.context["steps"]["fetch"]["output"]["ok"] = False
    run_copy.output["a"] = 2
    run_copy.labels["env"] = "dev"
    run_copy.steps["each"].children["each[1]"].item["x"].append(3)
    run_copy.steps["each"].children["each[1]"].error["message"] = "changed"
    run_copy.steps["fetch"].status = StepStatus.FAILED
    assert run == full_run()
    fetch = wf_copy.steps["fetch"]
    fetch.input["opts"]["tags"].append("c")
    assert fetch.meta is not None and fetch.retry is not None
    fetch.meta.labels["k"] = "changed"
    fetch.meta.risk_tags.append("x")
    fetch.retry.max_retries = 9
    fetch.route_labels["zone"] = "us"
    wf_copy.steps["each"].depends_on.append("x")
    wf_copy.config["retries"]["default"] = 2
    wf_copy.parameters[0]["name"] = "changed"
    assert wf == full_workflow()


def test_run_clone_can_leave_out_steps_context_and_input() -> None:
    header = full_run().clone(with_steps=False, with_context=False, with_input=False)
    assert (header.steps, header.context, header.input) == ({}, {}, {})
    expected = full_run()
    expected.steps, expected.context, expected.input = {}, {}, {}
    assert header == expected


def test_step_run_clone_takes_the_given_id_when_its_own_is_empty() -> None:
    assert StepRun().clone(step_id="k").step_id == "k" == StepRun.from_dict({}, "k").step_id
    assert StepRun(step_id="own").clone(step_id="k").step_id == "own"
    parent = StepRun(step_id="p", children={"p[0]": StepRun()})
    assert parent.clone().children["p[0]"].step_id == "p[0]"
    assert parent.clone(with_children=False).children == {}


@given(step_run_trees)
def test_step_run_clone_property(run: StepRun) -> None:
    assert run.clone() == StepRun.from_dict(run.to_dict()) == run



class _Doc(dict):  # type: ignore[type-arg]
    """A document that is not a plain dict: ``from_dict`` takes its checking path."""


_RUN_DOCS: list[dict[str, Any]] = [
    {},
    {"id": "r", "workflow_id": "wf", "status": "running", "created_at": "2024-05-01T12:30:15Z"},
    {"id": "r", "workflow_id": "wf", "org_id": "o", "team_id": "t", "input": {"x": [1]},
     "context": {"steps": {"a": {"output": {"ok": True}}}}, "status": "succeeded",
     "started_at": "2024-05-01T12:30:15.5Z", "completed_at": "2024-05-01T14:30:15+02:00",
     "output": {"o": 1}, "error": {"message": "m"}, "steps": {"a": {"status": "failed"}},
     "total_cost": 2, "triggered_by": "cron", "updated_at": "2024-05-01T12:30:16Z",
     "labels": {"k": "v", "n": 1}, "metadata": {"m": None}, "idempotency_key": "i",
     "rerun_of": "r0", "rerun_step": "a", "dry_run": True},
    {"id": 7, "workflow_id": "wf", "status": "running"},
    {"id": "r", "status": "RUNNING", "total_cost": "1.5", "dry_run": "yes"},
    {"id": "r", "status": "running", "total_cost": True},
    {"id": "r", "status": "running", "labels": ["not", "a", "map"]},
    {"id": "r", "status": "nope"},
    {"id": "r", "status": "running", "started_at": "yesterday"},
    {"id": "r", "status": "running", "steps": {"a": {"status": "running", "attempts": "2"}}},
]


@pytest.mark.parametrize("doc", _RUN_DOCS)
def test_run_from_dict_of_a_plain_dict_is_the_checking_path(doc: dict[str, Any]) -> None:
    """Stored documents take a fast path; it gives what the checking path gives, or
    leaves the document to it (which then raises the same error)."""
    try:
        expected = WorkflowRun.from_dict(_Doc(doc))
    except ValidationError as exc:
        with pytest.raises(ValidationError, match="^" + re.escape(str(exc)) + "$"):
            WorkflowRun.from_dict(doc)
        return
    got = WorkflowRun.from_dict(doc)
    assert got == expected and type(got) is WorkflowRun
    assert got.to_dict() == expected.to_dict()


def test_stored_documents_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _RUN_DOCS[2]
    expected = WorkflowRun.from_dict(_Doc(doc))

    def refuse(*args: Any) -> Any:
        raise AssertionError("checking path taken")

    monkeypatch.setattr(run_doc, "_str_enum", refuse)
    assert WorkflowRun.from_dict(doc) == expected


def test_a_subclass_from_dict_is_built_through_its_init() -> None:
    @dataclass
    class Tagged(WorkflowRun):
        tag: str = "default"

    run = Tagged.from_dict({"id": "r", "status": "running", "steps": {"a": {}}})
    assert type(run) is Tagged and run.tag == "default" and run.steps["a"].step_id == "a"


@pytest.mark.parametrize("doc", [
    {}, {"status": "running", "attempts": 1, "job_id": "j", "output": "redis://x"},
    {"step_id": "s", "status": "failed", "started_at": "2024-05-01T12:30:15Z",
     "completed_at": "2024-05-01T12:30:16Z", "next_attempt_at": "2024-05-01T12:31:00Z",
     "input": {"i": 1}, "error": {"message": "m"}, "item": [1], "output": {"o": [None]},
     "children": {"s[0]": {"status": "succeeded"}}},
    {"status": "running", "attempts": True}, {"status": "Running"}, {"status": "x"},
    {"status": "running", "input": []}, {"status": "running", "started_at": 5},
])
def test_step_from_dict_of_a_plain_dict_is_the_checking_path(doc: dict[str, Any]) -> None:
    try:
        expected = StepRun.from_dict(_Doc(doc), "id")
    except ValidationError as exc:
        with pytest.raises(ValidationError, match="^" + re.escape(str(exc)) + "$"):
            StepRun.from_dict(doc, "id")
        return
    got = StepRun.from_dict(doc, "id")
    assert got == expected and type(got) is StepRun
