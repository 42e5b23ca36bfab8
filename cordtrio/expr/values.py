"""Values in expressions: truthiness, printed form, coercion, path steps, functions.

Everything here is total: no function raises on any JSON-like input.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "COMPARISONS",
    "FUNCTIONS",
    "Evaluator",
    "Scope",
    "compare",
    "is_number",
    "key_of",
    "lookup",
    "to_number",
    "to_text",
    "truthy",
]

#: What an expression is evaluated in: ``input``, ``ctx``, ``steps``, ``item``, ...
Scope = Mapping[str, Any]
#: A compiled expression (or part of one): scope → value.
Evaluator = Callable[[Scope], Any]


def truthy(value: Any) -> bool:
    """Truthiness of SPEC §2: null, false, ``""``, 0 and 0.0 are false; all else is true.

    Unlike Python, an empty list or map is *true* (the original engine's rule).
    """
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value != ""
    return True


def to_text(value: Any) -> str:
    """The printed form of a value, used by templates and by printed-form comparisons.

    null → ``""``; booleans → ``true``/``false``; integers and integral floats → ``3``;
    other floats → shortest repr (``2.5``); strings as they are; lists and maps → compact
    JSON; anything else → ``str(value)``.
    """
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        # Very large integral floats keep their exponent form ("1e+300"), not 300 digits.
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict | list | tuple):
        try:
            return json.dumps(value, separators=(",", ":"), sort_keys=False, default=str)
        except (TypeError, ValueError):  # non-string keys of odd types, cycles
            return str(value)
    return str(value)


_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOATS: Final = frozenset(
    {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan", "+nan", "-nan"}
)


def to_number(value: Any) -> int | float:
    """Coerce the right side of a numeric comparison: numbers as they are, bool → 1/0,
    strings that spell a number (after strip) → that number, anything else → 0."""
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # beyond Python's int-string digit limit
                return float(text)
        if _FLOAT_TEXT.fullmatch(text) or text.lower() in _SPECIAL_FLOATS:
            return float(text)
    return 0


def is_number(value: Any) -> bool:
    """True for int and float, false for bool (which is an int subclass in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


_INDEX_TEXT: Final = re.compile(r"-?(?:0|[1-9][0-9]*)")


def key_of(key: Any) -> tuple[str | None, int | None]:
    """Normalise an index value to (map key, list index); ``None`` where it cannot apply.

    Map keys are strings (JSON), so ``m[1]`` looks up ``"1"``; a list accepts an int or a
    string spelling one (``items.0``, ``items['0']``)."""
    if isinstance(key, str):
        text = key
    elif is_number(key):
        text = to_text(key)
    else:
        return None, None
    return text, (int(text) if _INDEX_TEXT.fullmatch(text) else None)


def lookup(container: Any, key: str | None, index: int | None) -> Any:
    """One path step; ``None`` for a missing key, a bad index or a non-container."""
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list | tuple):
        if index is None:
            return None
        try:
            return container[index]  # a negative index counts from the end
        except IndexError:
            return None
    if isinstance(container, Mapping) and key is not None:
        return container.get(key)
    return None


def compare(op: Callable[[Any, Any], bool], left: Any, right: Any) -> bool:
    """Comparison of SPEC §2: numeric when the left side is a number (the right side is
    coerced), lexicographic for two strings, otherwise on the printed forms."""
    if is_number(left):
        return op(left, to_number(right))
    if isinstance(left, str) and isinstance(right, str):
        return op(left, right)
    return op(to_text(left), to_text(right))


def _fn_length(value: Any) -> int:
    """``length(x)``: length of a list, string or map; 0 for anything else."""
    if isinstance(value, str | list | tuple | dict):
        return len(value)
    return 0


def _fn_first(value: Any) -> Any:
    """``first(x)``: the first element of a non-empty list, else null."""
    if isinstance(value, list | tuple) and value:
        return value[0]
    return None


#: name → (number of arguments, implementation)
FUNCTIONS: Final[dict[str, tuple[int, Callable[[Any], Any]]]] = {
    "length": (1, _fn_length),
    "first": (1, _fn_first),
}

COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
