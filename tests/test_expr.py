"""Expressions and templates (SPEC §2): each test names one rule of the language."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cordtrio.expr.compiler
import cordtrio.expr.template
from cordtrio.errors import ExpressionError
from cordtrio.expr import check_template, compile_expr, evaluate, render, to_text, truthy

SCOPE: dict[str, Any] = {
    "input": {
        "n": 7,
        "f": 2.5,
        "zero": 0,
        "s": "hello",
        "empty": "",
        "flag": True,
        "off": False,
        "list": [1, 2],
        "map": {"a": 1},
        "numbered": {"1": "one"},
        "user": {"name": "Ada", "tags": ["x", "y"]},
        "a}b": "brace",
        "with-dash": "dashed",
        "op": "x>y",
    },
    "ctx": {"region": "eu"},
    "steps": {"fetch": {"output": {"items": [{"id": "x1"}, {"id": "x2"}, "last"]}}},
    "item": {"i": 1},
}


def ev(expr: str) -> Any:
    return evaluate(expr, SCOPE)


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1", 1),
        ("1.5", 1.5),
        ("-2", -2),
        ("- 2.5", -2.5),
        ("1e3", 1000.0),
        ("true", True),
        ("false", False),
        ("null", None),
        ("'single'", "single"),
        ('"double"', "double"),
        ("'it\"s'", 'it"s'),
        ("''", ""),
    ],
)
def test_literals(expr: str, expected: Any) -> None:
    result = ev(expr)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (r"'a\nb'", "a\nb"),
        (r"'a\tb'", "a\tb"),
        (r"'a\\b'", "a\\b"),
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'caf\u00e9'", "café"),
        (r"'\ud83d\ude00'", "\U0001f600"),
        (r"'a\/b'", "a/b"),
    ],
)
def test_string_escapes(expr: str, expected: str) -> None:
    assert ev(expr) == expected


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        (r"'\q'", r"unknown escape '\q'"),
        (r"'\u12'", "4 hex digits"),
        (r"'\ud800'", "unpaired surrogate"),
        (r"'\udc00'", "unpaired surrogate"),
        ("'open", "unterminated string at column 1"),
        ("'ends with backslash\\", "unterminated string"),
    ],
)
def test_bad_strings_are_errors(expr: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment.replace("\\", "\\\\")):
        compile_expr(expr)


# --------------------------------------------------------------------------- paths


def test_dot_path() -> None:
    assert ev("input.user.name") == "Ada"
    assert ev("ctx.region") == "eu"
    assert ev("input") is SCOPE["input"]


@pytest.mark.parametrize(
    "expr",
    [
        "input.nope",
        "input.nope.deeper.still",
        "nope",
        "nope.x",
        "input.s.length",  # a string is not a container
        "input.n[0]",  # neither is a number
        "input.list.x",  # a list has no named keys
        "input.list[9]",
        "input.list[-3]",
        "input.list[1.5]",
        "input.list[true]",
        "input.map[null]",
        "steps.missing.output.items[0]",
    ],
)
def test_missing_or_invalid_path_is_null(expr: str) -> None:
    assert ev(expr) is None


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("steps.fetch.output.items[0]", {"id": "x1"}),
        ("steps.fetch.output.items[0].id", "x1"),
        ("steps.fetch.output.items[-1]", "last"),
        ("steps.fetch.output.items.1.id", "x2"),  # dot with an integer segment indexes
        ("steps.fetch.output.items['1'].id", "x2"),
        ("steps.fetch.output.items[item.i].id", "x2"),  # computed index
        ("steps.fetch.output.items[-item.i]", "last"),
        ("input['a}b']", "brace"),
        ("input['with-dash']", "dashed"),
        ('input["user"]["tags"][1]', "y"),
        ("input.numbered[1]", "one"),  # map keys are strings: 1 looks up "1"
        ("input.numbered.1", "one"),
        ("(input.user).name", "Ada"),
        ("first(input.user.tags)", "x"),
        ("first(steps.fetch.output.items).id", "x1"),
    ],
)
def test_indexing(expr: str, expected: Any) -> None:
    assert ev(expr) == expected


def test_scope_may_be_any_mapping_and_paths_walk_mappings() -> None:
    class Frozen(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    scope = Frozen({"input": Frozen({"a": (10, 20)})})
    assert evaluate("input.a[1]", scope) == 20
    assert evaluate("input.b", scope) is None


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("length(input.list)", 2),
        ("length(input.s)", 5),
        ("length(input.map)", 1),
        ("length(input.empty)", 0),
        ("length(input.n)", 0),
        ("length(input.flag)", 0),
        ("length(input.nope)", 0),
        ("length('abc') == 3", True),
        ("first(input.list)", 1),
        ("first(input.s)", None),
        ("first(input.map)", None),
        ("first(input.nope)", None),
        ("first(steps.fetch.output.items[9])", None),
    ],
)
def test_functions(expr: str, expected: Any) -> None:
    assert ev(expr) == expected


def test_first_of_empty_list_is_null() -> None:
    assert evaluate("first(x)", {"x": []}) is None


def test_length_is_a_plain_name_without_parentheses() -> None:
    assert evaluate("length", {"length": 3}) == 3


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("upper(input.s)", "unknown function 'upper' at column 1 (known: first, length)"),
        ("length()", "length() takes 1 argument, got 0"),
        ("first(1, 2)", "first() takes 1 argument, got 2"),
        ("input.length(1)", "unexpected '('"),
    ],
)
def test_function_errors_are_compile_time(expr: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expr(expr)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- comparisons


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # numeric when the left side is a number: the right side is coerced
        ("input.n > '5'", True),
        ("input.n > '10'", False),  # numerically, although '7' > '10' as strings
        ("input.n == ' 7 '", True),
        ("input.n == '7.0'", True),
        ("input.n == 'abc'", False),  # unparsable → 0
        ("input.zero == 'abc'", True),
        ("input.zero == null", True),
        ("input.n > null", True),
        ("input.n == true", False),  # true → 1
        ("1 == true", True),
        ("input.zero == false", True),
        ("input.n == input.list", False),  # a list → 0
        ("input.f >= 2.5", True),
        ("input.f < 3", True),
        ("input.n != 7.0", False),
        ("input.n <= 7", True),
        ("-input.n < 0", True),
        # lexicographic for two strings
        ("'apple' < 'banana'", True),
        ("'10' < '9'", True),
        ("'B' < 'a'", True),  # code point order
        ("input.s >= 'hello'", True),
        ("input.s != 'hello'", False),
        # otherwise the printed forms
        ("input.flag == true", True),
        ("input.flag == 'true'", True),
        ("input.off != true", True),
        ("input.list == '[1,2]'", True),
        ("input.map == '{\"a\":1}'", True),
        ("input.missing == ''", True),
        ("input.missing == null", True),
        ("null == ''", True),
        ("'5' == 5", True),  # left is a string: "5" == printed 5
        ("'5.0' == 5", False),
        ("true > false", True),  # "true" > "false"
        ("input.missing < 'a'", True),  # "" < "a"
    ],
)
def test_comparisons(expr: str, expected: bool) -> None:
    assert ev(expr) is expected


@pytest.mark.parametrize("literal_right", [True, False])
def test_comparison_with_computed_right_side_matches_literal(literal_right: bool) -> None:
    scope = {"l": 7, "r": "5"}
    expr = "l > '5'" if literal_right else "l > r"
    assert evaluate(expr, scope) is True
    scope = {"l": "b", "r": "a"}
    expr = "l > 'a'" if literal_right else "l > r"
    assert evaluate(expr, scope) is True


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("input.op == 'x>y'", True),
        ("input.op != 'x>y'", False),
        ("'x>y' == input.op", True),
        ("input.s == 'a && b || c'", False),
        ("'a == b' == 'a == b'", True),
        ('input.op == "x>=y"', False),
    ],
)
def test_operators_inside_strings_are_not_operators(expr: str, expected: bool) -> None:
    assert ev(expr) is expected


# --------------------------------------------------------------------------- logic


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("true && true", True),
        ("true && false", False),
        ("false || true", True),
        ("false || false", False),
        ("true and false", False),
        ("false or true", True),
        ("not true", False),
        ("!false", True),
        ("!!input.s", True),
        ("!input.missing", True),
        ("1 && 'x'", True),  # booleans, not the last operand's value
        ("0 || ''", False),
        ("input.list && input.map", True),
        ("true || false && false", True),  # && binds tighter than ||
        ("(true || false) && false", False),
        ("false && false || true", True),
        ("input.n > 5 && input.s == 'hello'", True),
        ("input.n > 5 and not input.off", True),
        ("!true == false", True),  # (!true) == false
        ("not 'a' == 'b'", False),  # `not` is `!`: (not 'a') == 'b', i.e. "false" == "b"
        ("!('a' == 'b')", True),
        ("1 < 2 == true", True),  # left-associative: (1 < 2) == true
        ("a || b || c || true", True),
        ("true && true && input.n && false", False),
    ],
)
def test_logic_and_precedence(expr: str, expected: bool) -> None:
    assert ev(expr) is expected


class RecordingScope(dict[str, Any]):
    """A scope that records which root names were looked up."""

    def __init__(self, **values: Any) -> None:
        super().__init__(values)
        self.looked_up: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.looked_up.append(key)
        return super().get(key, default)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [("a && boom", False), ("b || boom", True), ("a and x and boom", False)],
)
def test_and_or_short_circuit(expr: str, expected: bool) -> None:
    scope = RecordingScope(a=0, b=1)
    assert evaluate(expr, scope) is expected
    assert "boom" not in scope.looked_up


def test_long_chains_do_not_nest() -> None:
    expr = " || ".join(["false"] * 500 + ["input.flag"])
    assert ev(expr) is True


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        ("", False),
        (0, False),
        (0.0, False),
        (True, True),
        ("false", True),
        ("0", True),
        (" ", True),
        (1, True),
        (-1, True),
        (0.5, True),
        ([], True),  # empty list and map are true (SPEC §2)
        ({}, True),
        ([0], True),
    ],
)
def test_truthiness(value: Any, expected: bool) -> None:
    assert truthy(value) is expected
    assert evaluate("!!v", {"v": value}) is expected
    assert evaluate("!v", {"v": value}) is (not expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (-3, "-3"),
        (3.0, "3"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1e300, "1e+300"),
        ("text", "text"),
        ([1, "a", None, True], '[1,"a",null,true]'),
        ({"a": [1, 2], "b": {}}, '{"a":[1,2],"b":{}}'),
        ((1, 2), "[1,2]"),
    ],
)
def test_to_text(value: Any, expected: str) -> None:
    assert to_text(value) == expected


def test_to_text_falls_back_to_str_for_other_objects() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    assert to_text(Thing()) == "thing"
    assert to_text({"t": Thing()}) == '{"t":"thing"}'


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
