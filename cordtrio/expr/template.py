"""Templates: strings containing ``${expr}``, rendered through nested dicts and lists."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import ExpressionError
from .compiler import CACHE_SIZE, CompiledExpr, compile_expr
from .lexer import quote
from .values import Evaluator, Scope, to_text

__all__ = ["check_template", "render"]


def _parse_template(text: str) -> list[str | CompiledExpr]:
    """Split a template into literal text and compiled ``${...}`` parts.

    The closing ``}`` is the first one outside a quoted string, so ``${input['a}b']}`` works.
    """
    parts: list[str | CompiledExpr] = []
    pos, n = 0, len(text)
    while (start := text.find("${", pos)) != -1:
        if start > pos:
            parts.append(text[pos:start])
        i = start + 2
        while i < n and text[i] != "}":
            if text[i] in "'\"":
                closing, i = text[i], i + 1
                while i < n and text[i] != closing:
                    i += 2 if text[i] == "\\" else 1
            i += 1
        if i >= n:
            raise ExpressionError(
                f'template {quote(text)}: unterminated "${{" at column {start + 1}'
            )
        try:
            parts.append(compile_expr(text[start + 2 : i].strip()))
        except ExpressionError as exc:
            raise ExpressionError(f"template {quote(text)}: {exc}") from None
        pos = i + 1
    if pos < n:
        parts.append(text[pos:])
    return parts


@lru_cache(maxsize=CACHE_SIZE)
def _compile_template(text: str) -> Evaluator:
    """The renderer of one template string (parsed once, cached)."""
    parts = _parse_template(text)
    if len(parts) == 1 and isinstance(parts[0], CompiledExpr):
        return parts[0]._run  # the whole string is one ${expr}: keep the value's type
    pieces = tuple(p if isinstance(p, str) else p._run for p in parts)
    return lambda scope: "".join([p if isinstance(p, str) else to_text(p(scope)) for p in pieces])


def render(value: Any, scope: Scope) -> Any:
    """Apply templates through nested dicts and lists (SPEC §2); returns new containers.

    A string without ``${`` is returned as is; a string that is exactly one ``${expr}``
    (whitespace allowed inside the braces, not around them) becomes the value itself, with
    its type; any other string has each ``${expr}`` replaced by its printed form (null prints
    as empty). Map keys are not templated. Raises ExpressionError for a bad template.
    """
    if isinstance(value, str):
        return _compile_template(value)(scope) if "${" in value else value
    if isinstance(value, dict):
        return {key: render(child, scope) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [render(child, scope) for child in value]
    return value


def check_template(value: Any) -> None:
    """Parse (not evaluate) every ``${...}`` in a nested value; raise ExpressionError for
    the first one that does not parse (workflow validation)."""
    if isinstance(value, str):
        if "${" in value:
            _compile_template(value)
    elif isinstance(value, dict):
        for child in value.values():
            check_template(child)
    elif isinstance(value, list | tuple):
        for child in value:
            check_template(child)
