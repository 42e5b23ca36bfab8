"""Templates (SPEC §2): rendering and checking ``${...}`` templates."""

from __future__ import annotations

from typing import Any

import pytest
from _expr_scope import SCOPE

from cordtrio.errors import ExpressionError
from cordtrio.expr import check_template, render

# --------------------------------------------------------------------------- templates


def test_render_string_without_template_is_unchanged() -> None:
    text = "plain $ text {with braces} and $notatemplate"
    assert render(text, SCOPE) is text


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.list}", [1, 2]),
        ("${input.n}", 7),
        ("${input.f}", 2.5),
        ("${input.flag}", True),
        ("${input.map}", {"a": 1}),
        ("${input.missing}", None),
        ("${ input.n }", 7),  # whitespace inside the braces is fine
        ("${input.n > 5}", True),
    ],
)
def test_render_whole_template_keeps_the_type(template: str, expected: Any) -> None:
    result = render(template, SCOPE)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("n=${input.n}", "n=7"),
        ("[${input.missing}]", "[]"),  # null prints as empty
        ("${input.n}${input.n}", "77"),  # two expressions: a string
        (" ${input.n}", " 7"),  # whitespace around the braces makes it text
        ("${input.n} ", "7 "),
        ("${input.list}!", "[1,2]!"),
        ("flag=${input.flag}, f=${input.f}", "flag=true, f=2.5"),
        ("${input['a}b']}", "brace"),  # a '}' inside a quoted string does not close
        ("<${'${'}>", "<${>"),
        ("cost: $${input.n}", "cost: $7"),
        ("x } ${input.s} {", "x } hello {"),
    ],
)
def test_render_mixed_template_prints(template: str, expected: str) -> None:
    assert render(template, SCOPE) == expected


def test_render_walks_dicts_and_lists() -> None:
    value = {
        "name": "${input.user.name}",
        "tags": ["${input.user.tags}", "tag-${input.n}", 3, None, True],
        "nested": {"deep": [{"id": "${steps.fetch.output.items[0].id}"}]},
        "${input.s}": "keys are not templates",
    }
    assert render(value, SCOPE) == {
        "name": "Ada",
        "tags": [["x", "y"], "tag-7", 3, None, True],
        "nested": {"deep": [{"id": "x1"}]},
        "${input.s}": "keys are not templates",
    }
    assert value["name"] == "${input.user.name}"  # the input is not modified


@pytest.mark.parametrize("scalar", [1, 2.5, True, None])
def test_render_passes_scalars_through(scalar: Any) -> None:
    assert render(scalar, SCOPE) is scalar


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("hi ${input.s", 'template "hi ${input.s": unterminated "${" at column 4'),
        ("${input['}']", "unterminated"),
        ("${}", "empty expression"),
        ("ok ${input.n} bad ${input.n ==}", 'expression "input.n ==": unexpected end'),
        ("${nope(1)}", "unknown function 'nope'"),
    ],
)
def test_render_bad_template_is_an_error(template: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        render({"k": [template]}, SCOPE)
    assert fragment in str(info.value)


def test_check_template_accepts_valid_nested_templates_without_evaluating() -> None:
    check_template({"a": ["${steps.x.output[0]}", {"b": "x ${length(item)}"}], "c": 3})
    check_template("no template")
    check_template(None)


@pytest.mark.parametrize(
    "value",
    [
        "${a ==}",
        {"a": {"b": ["ok", "${unknown(x)}"]}},
        ["${x", "fine"],
        {"x": "${a b}"},
    ],
)
def test_check_template_rejects_bad_templates(value: Any) -> None:
    with pytest.raises(ExpressionError):
        check_template(value)
