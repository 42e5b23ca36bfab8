"""Expression evaluation (SPEC §2): literals, paths, functions, comparisons, logic and
values; each test names one rule of the language."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from _expr_scope import SCOPE, ev

from cordtrio.errors import ExpressionError
from cordtrio.expr import compile_expr, evaluate, to_text, truthy

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
