"""Workflow definitions written by people: misspelled keys, syntax errors and steps built in
Python are reported (or filled in) before anything runs, while stored documents stay
readable whatever keys they carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordtrio.backends.memory import MemoryStore
from cordtrio.errors import ValidationError
from cordtrio.model import RetryConfig, Step, StepMeta, StepType, Workflow, load_workflow
from cordtrio.validation import validate_workflow


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------- unknown keys


def test_misspelled_depends_on_names_the_step_and_suggests_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "wf.yaml",
                 "id: wf\nsteps:\n  a: {topic: t}\n  b: {topic: t, depend_on: [a]}\n")
    with pytest.raises(ValidationError) as info:
        load_workflow(path)
    message = str(info.value)
    assert "wf.yaml" in message and "step 'b'" in message
    assert "unknown key 'depend_on'" in message and "did you mean 'depends_on'?" in message


@pytest.mark.parametrize(
    ("step", "fragments"),
    [
        ({"topic": "t", "retries": {"max_retries": 2}},
         ("step 'a'", "'retries'", "did you mean 'retry'?")),
        ({"topic": "t", "retry": {"max_retry": 2}},
         ("step 'a'.retry", "'max_retry'", "did you mean 'max_retries'?")),
        ({"topic": "t", "meta": {"actorid": "u1"}},
         ("step 'a'.meta", "'actorid'", "did you mean 'actor_id'?")),
        ({"topic": "t", "zzz": 1}, ("step 'a'", "unknown key 'zzz'")),
    ],
)
def test_unknown_step_retry_and_meta_keys_are_rejected(step: dict, fragments: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict({"id": "wf", "steps": {"a": step}})
    for fragment in fragments:
        assert fragment in str(info.value)
    if "zzz" in str(info.value):
        assert "did you mean" not in str(info.value)


def test_unknown_workflow_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"workflow 'wf': unknown key 'timeout'.*"
                                              r"did you mean 'timeout_sec'"):
        Workflow.from_dict({"id": "wf", "timeout": 5, "steps": {}})


def test_meta_labels_stay_free_form() -> None:
    wf = Workflow.from_dict({"id": "wf", "steps": {
        "a": {"topic": "t", "meta": {"labels": {"anything": "goes"}}}}})
    assert wf.steps["a"].meta == StepMeta(labels={"anything": "goes"})


def test_non_strict_parse_ignores_unknown_keys() -> None:
    doc = {"id": "wf", "future_field": 1, "steps": {
        "a": {"topic": "t", "depend_on": ["x"], "retry": {"max_retries": 1, "jitter": 0.5},
              "meta": {"future": "x"}}}}
    wf = Workflow.from_dict(doc, strict=False)
    assert wf.steps["a"].retry == RetryConfig(max_retries=1)
    assert wf.steps["a"].depends_on == []


async def test_memory_store_round_trips_a_saved_workflow() -> None:
    store = MemoryStore()
    await store.save_workflow(Workflow(id="wf", steps={"a": Step(topic="t")}))
    assert (await store.get_workflow("wf")).steps["a"].topic == "t"


def test_unknown_step_type_lists_the_valid_types() -> None:
    with pytest.raises(ValidationError) as info:
        Workflow.from_dict({"id": "wf", "steps": {"a": {"type": "bogus", "topic": "t"}}})
    message = str(info.value)
    assert "unknown StepType 'bogus'" in message
    assert "worker" in message and "approval" in message and "subworkflow" in message


# ------------------------------------------------------------------------- syntax errors


def test_yaml_syntax_error_names_the_file_line_and_column_with_a_caret(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml",
                 "id: wf\nsteps:\n  a:\n    topic: t\n    retry: {max_retries: 3}: x\n")
    with pytest.raises(ValidationError) as info:
        load_workflow(path)
    lines = str(info.value).splitlines()
    assert "broken.yaml" in lines[0] and "line 5, column 28" in lines[0]
    assert "<unicode string>" not in str(info.value)
    assert lines[1].strip() == "retry: {max_retries: 3}: x"
    assert lines[2].index("^") == lines[1].index(": x")


def test_json_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{"id": "wf",\n "steps": {"a": {"topic": "t"},}}')
    with pytest.raises(ValidationError) as info:
        load_workflow(path)
    lines = str(info.value).splitlines()
    assert "broken.json" in lines[0] and "line 2, column 32" in lines[0]
    assert lines[2].index("^") == lines[1].index("}}")


# ------------------------------------------------------------------- steps built in Python


def test_step_id_defaults_to_its_key() -> None:
    wf = Workflow(id="wf", steps={"a": Step(topic="t"), "b": Step(topic="t", depends_on=["a"])})
    assert wf.steps["a"].id == "a" and wf.steps["b"].id == "b"
    validate_workflow(wf)


def test_a_differing_explicit_id_is_still_rejected() -> None:
    wf = Workflow(id="wf", steps={"a": Step(id="b", topic="t")})
    with pytest.raises(ValidationError, match="key does not match"):
        validate_workflow(wf)


def test_step_type_given_as_a_string_becomes_the_enum() -> None:
    step = Step(id="a", type="Approval")  # type: ignore[arg-type]
    assert step.type is StepType.APPROVAL
    assert not step.type.is_worker_like
    assert Step(id="a", topic="t", type="bogus").type == "bogus"  # type: ignore[arg-type]
