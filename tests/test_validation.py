"""Save-time validation of workflow definitions (SPEC §1) and the graph helpers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.model import RetryConfig, Step, StepType, Workflow
from cordtrio.validation import collect_dependencies, topological_order, validate_workflow


def make_wf(steps: dict[str, dict[str, Any]], **fields: Any) -> Workflow:
    """A workflow 'wf' from a mapping of step id → step document."""
    return Workflow.from_dict({"id": "wf", "steps": steps, **fields})


def job(**fields: Any) -> dict[str, Any]:
    """A worker step document with a topic."""
    return {"topic": "job.test", **fields}


def rejects(wf: Workflow, *fragments: str) -> str:
    """Assert validation fails and the message contains every fragment; return it."""
    with pytest.raises(ValidationError) as info:
        validate_workflow(wf)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------- accepted


def complex_workflow() -> Workflow:
    return make_wf(
        {
            "fetch": job(
                input={"url": "${input.url}", "n": 3},
                retry={"max_retries": 2, "initial_backoff_sec": 1, "max_backoff_sec": 10,
                       "multiplier": 2},
                timeout_sec=30,
                output_path="data.fetched",
                output_schema={"type": "object", "properties": {"items": {"type": "array"}}},
                on_error="cleanup",
            ),
            "has_items": {
                "type": "condition",
                "condition": "length(steps.fetch.output.items) > 0",
                "depends_on": ["fetch"],
                "output_path": "flags.has_items",
            },
            "resize": job(
                depends_on=["has_items"],
                condition="steps.has_items.output == true",
                for_each="steps.fetch.output.items",
                max_parallel=4,
                input={"image": "${item}", "sizes": ["${input.size}", "thumb-${input.size}"]},
                input_schema={"type": "object", "required": ["image"]},
                route_labels={"gpu": "true"},
                meta={"actor_id": "u1", "actor_type": "human", "risk_tags": ["pii"]},
            ),
            "approve": {"type": "approval", "depends_on": ["resize"]},
            "wait": {"type": "delay", "delay_sec": 5, "depends_on": ["approve"]},
            "wait_until": {
                "type": "delay", "delay_until": "2030-01-01T00:00:00Z", "depends_on": ["approve"],
            },
            "publish": {
                "type": "llm", "worker_id": "w-llm", "depends_on": ["wait", "wait_until"],
            },
            "notify": {
                "type": "notify",
                "depends_on": ["publish"],
                "input": {"level": "info", "message": "done ${steps.publish.output}"},
            },
            "cleanup": job(input={"why": "${error.message}"}),
        },
        timeout_sec=3600,
        input_schema={"type": "object", "properties": {"url": {"type": "string"}}},
    )


def test_valid_complex_workflow_passes() -> None:
    validate_workflow(complex_workflow())


def test_empty_workflow_is_allowed() -> None:
    validate_workflow(Workflow(id="empty"))


def test_condition_step_with_empty_condition_is_a_runtime_failure_not_a_save_error() -> None:
    validate_workflow(make_wf({"c": {"type": "condition"}}))


def test_directly_constructed_workflow_passes() -> None:
    wf = Workflow(id="wf", steps={
        "a": Step(id="a", topic="job.a"),
        "b": Step(id="b", worker_id="w1", depends_on=["a"], retry=RetryConfig(max_retries=1)),
    })
    validate_workflow(wf)


# ---------------------------------------------------------------------------- rejected


def test_empty_workflow_id() -> None:
    rejects(Workflow(id="", steps={"a": Step(id="a", topic="t")}), "workflow", "id")


def test_negative_workflow_timeout() -> None:
    rejects(make_wf({"a": job()}, timeout_sec=-1), "workflow 'wf'", "timeout_sec", ">= 0")


def test_invalid_workflow_input_schema() -> None:
    rejects(make_wf({"a": job()}, input_schema={"type": "nope"}),
            "workflow 'wf'", "input_schema", "not a valid JSON Schema")


def test_step_key_differs_from_id() -> None:
    wf = Workflow(id="wf", steps={"a": Step(id="b", topic="t")})
    rejects(wf, "workflow 'wf'", "step 'a'", "'b'")


def test_step_with_empty_id() -> None:
    wf = Workflow(id="wf", steps={"": Step(id="", topic="t")})
    rejects(wf, "workflow 'wf'", "empty id")


def test_unknown_step_type_on_directly_built_step() -> None:
    wf = Workflow(id="wf", steps={"a": Step(id="a", topic="t", type="bogus")})  # type: ignore[arg-type]
    rejects(wf, "step 'a'", "unknown step type", "bogus")


def test_unknown_dependency() -> None:
    message = rejects(make_wf({"fetch_data": job(), "load": job(depends_on=["fetch"])}))
    assert message == "workflow 'wf': step 'load' depends on unknown step 'fetch'"


def test_self_dependency() -> None:
    rejects(make_wf({"a": job(depends_on=["a"])}), "step 'a'", "depends on itself")


def test_two_step_cycle_is_named() -> None:
    message = rejects(make_wf({"a": job(depends_on=["b"]), "b": job(depends_on=["a"])}))
    assert message == "workflow 'wf': step 'a' is part of a dependency cycle a -> b -> a"


def test_longer_cycle_is_named_in_order_from_first_defined_member() -> None:
    wf = make_wf({
        "start": job(),
        "x": job(depends_on=["start", "c"]),  # reaches the cycle but is not part of it
        "a": job(depends_on=["b"]),
        "b": job(depends_on=["c"]),
        "c": job(depends_on=["a"]),
    })
    rejects(wf, "step 'a'", "cycle a -> b -> c -> a")


def test_worker_step_without_topic_or_worker_id() -> None:
    rejects(make_wf({"a": {}}), "step 'a'", "topic", "worker_id")


def test_worker_like_type_without_topic_or_worker_id() -> None:
    rejects(make_wf({"ask": {"type": "http"}}), "step 'ask'", "topic", "'http'")


@pytest.mark.parametrize("kind", ["condition", "approval", "delay", "notify"])
def test_engine_steps_need_no_topic(kind: str) -> None:
    validate_workflow(make_wf({"s": {"type": kind}}))


def test_bad_condition_expression() -> None:
    rejects(make_wf({"a": job(condition="(input.x > 1")}),
            "step 'a'", "condition", "(input.x > 1")


def test_bad_condition_on_condition_step() -> None:
    rejects(make_wf({"c": {"type": "condition", "condition": "input.x =="}}),
            "step 'c'", "condition")


def test_bad_for_each_expression() -> None:
    rejects(make_wf({"a": job(for_each="steps.fetch.output.items[")}), "step 'a'", "for_each")


def test_bad_template_in_input_names_the_path() -> None:
    wf = make_wf({"a": job(input={"outer": {"list": ["ok", "${input.x"]}})})
    rejects(wf, "step 'a'", "input.outer.list[1]", "template")


def test_bad_template_in_notify_input() -> None:
    wf = make_wf({"n": {"type": "notify", "input": {"message": "hi ${(input.name}"}}})
    rejects(wf, "step 'n'", "input.message")


def test_negative_delay_sec() -> None:
    rejects(make_wf({"d": {"type": "delay", "delay_sec": -1}}), "step 'd'", "delay_sec", ">= 0")


def test_unparsable_delay_until() -> None:
    rejects(make_wf({"d": {"type": "delay", "delay_until": "tomorrow"}}),
            "step 'd'", "delay_until", "RFC 3339", "tomorrow")


def test_negative_max_parallel() -> None:
    rejects(make_wf({"a": job(for_each="input.items", max_parallel=-2)}),
            "step 'a'", "max_parallel")


def test_negative_timeout_sec() -> None:
    rejects(make_wf({"a": job(timeout_sec=-5)}), "step 'a'", "timeout_sec")


def test_non_finite_number() -> None:
    rejects(make_wf({"d": {"type": "delay", "delay_sec": math.inf}}), "step 'd'", "delay_sec",
            "finite")


def test_on_error_naming_unknown_step() -> None:
    rejects(make_wf({"a": job(on_error="cleanup")}), "step 'a'", "on_error", "'cleanup'")


def test_on_error_naming_itself() -> None:
    rejects(make_wf({"a": job(on_error="a")}), "step 'a'", "on_error", "itself")


@pytest.mark.parametrize(
    "field", ["max_retries", "initial_backoff_sec", "max_backoff_sec", "multiplier"]
)
def test_negative_retry_numbers(field: str) -> None:
    rejects(make_wf({"a": job(retry={field: -1})}), "step 'a'", f"retry.{field}", ">= 0")


@pytest.mark.parametrize("path", ["a..b", ".a", "a.", "."])
def test_output_path_with_empty_segment(path: str) -> None:
    rejects(make_wf({"a": job(output_path=path)}), "step 'a'", "output_path", "empty segment")


def test_invalid_inline_input_schema() -> None:
    wf = make_wf({"a": job(input_schema={"type": "object", "required": "name"})})
    rejects(wf, "step 'a'", "input_schema", "not a valid JSON Schema")


def test_invalid_inline_output_schema_names_the_location() -> None:
    wf = make_wf({"a": job(output_schema={"properties": {"x": {"type": 5}}})})
    rejects(wf, "step 'a'", "output_schema", "properties.x.type")


# ---------------------------------------------------------------------------- stability


def test_first_problem_in_definition_order_is_reported() -> None:
    steps = {
        "first": job(depends_on=["ghost"]),
        "second": job(delay_sec=-1),
        "third": {"type": "worker"},
    }
    assert "step 'first'" in rejects(make_wf(steps))
    reordered = {k: steps[k] for k in ("third", "second", "first")}
    assert "step 'third'" in rejects(make_wf(reordered))


def test_messages_are_stable_across_calls() -> None:
    wf = make_wf({"a": job(depends_on=["c"]), "b": job(depends_on=["a"]),
                  "c": job(depends_on=["b"])})
    messages = {rejects(wf) for _ in range(5)}
    assert messages == {"workflow 'wf': step 'a' is part of a dependency cycle a -> c -> b -> a"}


def test_step_level_problems_are_reported_before_cycles() -> None:
    wf = make_wf({"a": job(depends_on=["b"]), "b": job(depends_on=["a"]), "z": job(delay_sec=-1)})
    rejects(wf, "step 'z'", "delay_sec")


# ---------------------------------------------------------------------------- graph helpers


def diamond() -> Workflow:
    return make_wf({
        "d": job(depends_on=["b", "c"]),
        "b": job(depends_on=["a"]),
        "c": job(depends_on=["a"]),
        "a": job(),
        "lone": job(),
    })


def test_collect_dependencies_on_a_diamond() -> None:
    wf = diamond()
    assert collect_dependencies(wf, "d") == {"a", "b", "c"}
    assert collect_dependencies(wf, "b") == {"a"}
    assert collect_dependencies(wf, "a") == set()
    assert collect_dependencies(wf, "lone") == set()


def test_collect_dependencies_unknown_step() -> None:
    with pytest.raises(NotFoundError, match="'nope'"):
        collect_dependencies(diamond(), "nope")


def test_topological_order_respects_dependencies_and_definition_order() -> None:
    order = topological_order(diamond())
    assert order == ["a", "lone", "b", "c", "d"]
    assert topological_order(complex_workflow())[:2] == ["fetch", "has_items"]


def test_topological_order_rejects_cycles() -> None:
    with pytest.raises(ValidationError, match=r"cycle a -> b -> a"):
        topological_order(make_wf({"a": job(depends_on=["b"]), "b": job(depends_on=["a"])}))


def test_step_type_enum_accepted_from_string() -> None:
    wf = Workflow(id="wf", steps={"a": Step(id="a", type=StepType.APPROVAL)})
    validate_workflow(wf)


def test_a_step_may_not_depend_on_an_on_error_handler() -> None:
    wf = Workflow.from_dict({"id": "wf", "steps": {
        "work": {"topic": "t", "on_error": "cleanup"},
        "cleanup": {"topic": "t"},
        "after": {"topic": "t", "depends_on": ["cleanup"]},
    }})
    with pytest.raises(ValidationError, match="step 'after' depends on on_error handler 'cleanup'"):
        validate_workflow(wf)
