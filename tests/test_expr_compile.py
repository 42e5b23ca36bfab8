"""Compiling expressions (SPEC §2): parse errors, caching of compiled forms, and the
property that bad input only ever raises ExpressionError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from _expr_scope import SCOPE, ev
from hypothesis import given
from hypothesis import strategies as st

import cordtrio.expr.compiler
import cordtrio.expr.template
from cordtrio.errors import ExpressionError
from cordtrio.expr import compile_expr, evaluate, render, to_text

# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("a == ", 'expression "a == ": unexpected end at column 5'),
        ("a b", "unexpected 'b' at column 3 (expected an operator or the end)"),
        ("1 2", "unexpected number 2 at column 3"),
        ("a 'x'", 'unexpected string "x" at column 3'),
        ("", 'expression "": empty expression'),
        ("   ", "empty expression"),
        ("(a", "unexpected end at column 3 (expected ')')"),
        ("a)", "unexpected ')' at column 2"),
        ("((a)", "expected ')'"),
        ("x[1", "unexpected end at column 4 (expected ']')"),
        ("a = b", "unexpected character '=' at column 3 (did you mean '=='?)"),
        ("a & b", "unexpected character '&' at column 3 (did you mean '&&'?)"),
        ("a | b", "unexpected character '|' at column 3 (did you mean '||'?)"),
        ("a - b", "unexpected '-' at column 3 (there is no subtraction"),
        ("steps.my-step.output", "unexpected '-' at column 9"),
        ("a.", "unexpected end at column 3 (expected a key after '.')"),
        ("a.(b)", "expected a key after '.'"),
        ("and", "unexpected 'and' at column 1"),
        ("a ||", "unexpected end"),
        ("!", "unexpected end at column 2"),
        ("a == == b", "unexpected '==' at column 6"),
        ("a ? b", "unexpected character '?'"),
        ("${a}", "unexpected character '$'"),
        ("1" * 5000, "number too long"),
    ],
)
def test_parse_errors_quote_the_expression_and_say_where(expr: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expr(expr)
    assert message in str(info.value)
    assert str(info.value).startswith("expression ")


@pytest.mark.parametrize(
    "expr", ["(" * 40 + "1" + ")" * 40, "!" * 100 + "a", "a" + " == a" * 100, "x" + "[0" * 40]
)
def test_deep_nesting_is_an_expression_error(expr: str) -> None:
    with pytest.raises(ExpressionError, match="nested more than"):
        compile_expr(expr)


def test_long_paths_are_not_deep() -> None:
    assert evaluate("a" + ".b" * 200, {"a": None}) is None


def test_compile_expr_rejects_non_strings() -> None:
    with pytest.raises(ExpressionError, match="must be a string, got int"):
        compile_expr(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- caching


def test_compile_expr_is_cached() -> None:
    first = compile_expr("input.n > 1 && input.cache_test")
    assert compile_expr("input.n > 1 && input.cache_test") is first
    assert first.source == "input.n > 1 && input.cache_test"
    assert "input.cache_test" in repr(first)


def test_evaluation_does_not_parse_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expr = "steps.fetch.output.items[item.i].id == 'x2' && input.parse_spy != 1"
    assert ev(expr) is True
    calls: list[str] = []

    def spy(source: str) -> Any:
        calls.append(source)
        raise AssertionError("parsed again")

    monkeypatch.setattr(cordtrio.expr.compiler, "parse", spy)
    assert ev(expr) is True
    assert compile_expr(expr).evaluate(SCOPE) is True
    assert calls == []


def test_render_does_not_parse_a_template_again(monkeypatch: pytest.MonkeyPatch) -> None:
    template = {"a": "value ${input.n} (render spy)", "b": "${input.list}"}
    expected = {"a": "value 7 (render spy)", "b": [1, 2]}
    assert render(template, SCOPE) == expected

    def fail(*_: Any) -> Any:
        raise AssertionError("parsed again")

    monkeypatch.setattr(cordtrio.expr.template, "_parse_template", fail)
    monkeypatch.setattr(cordtrio.expr.compiler, "parse", fail)
    assert render(template, SCOPE) == expected


# --------------------------------------------------------------------------- properties


@given(st.text().filter(lambda s: "${" not in s))
def test_render_without_template_is_identity(text: str) -> None:
    assert render(text, SCOPE) == text
    assert render([text, {"k": text}], SCOPE) == [text, {"k": text}]


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_to_text_of_ints_round_trips(number: int) -> None:
    assert int(to_text(number)) == number
    assert evaluate(to_text(number), {}) == number


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_to_text_of_floats_round_trips(number: float) -> None:
    assert float(to_text(number)) == number


@given(st.text())
def test_compile_only_raises_expression_error(text: str) -> None:
    try:
        compiled = compile_expr(text)
    except ExpressionError:
        return
    compiled.evaluate(SCOPE)  # whatever parses also evaluates without raising


@given(st.text(alphabet="ab.[]()'\"\\!=<>&|-, 01tru", max_size=30))
def test_compile_only_raises_expression_error_on_expression_like_text(text: str) -> None:
    try:
        compiled = compile_expr(text)
    except ExpressionError:
        return
    compiled.evaluate({"a": {"b": [1, {"a": "b"}]}, "b": "1"})


@given(st.text(alphabet="${}'\"\\ab.", max_size=30))
def test_render_only_raises_expression_error(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        render(text, SCOPE)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20))
def test_quoted_strings_round_trip(text: str) -> None:
    assert evaluate(json.dumps(text), {}) == text
