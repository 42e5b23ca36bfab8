"""Compilation of the AST into nested closures, and the cached ``compile_expr``.

Paths (``a.b[0].c``) are flattened into one loop over pre-normalised keys; comparisons
against a literal pre-compute the literal's number and printed form; ``&&``/``||`` chains
are n-ary. Evaluating never parses and never raises.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

from ..errors import ExpressionError
from .parser import Call, Compare, Index, Literal, Logical, Member, Name, Node, Unary, parse
from .values import (
    COMPARISONS,
    FUNCTIONS,
    Evaluator,
    Scope,
    compare,
    is_number,
    key_of,
    lookup,
    to_number,
    to_text,
    truthy,
)

__all__ = ["CACHE_SIZE", "CompiledExpr", "compile_expr", "evaluate"]

#: How many distinct expressions (and, in ``template``, template strings) stay compiled.
CACHE_SIZE: Final = 4096


def _compile(node: Node) -> Evaluator:
    """Turn an AST node into a closure ``scope -> value``."""
    match node:
        case Literal(value=value):
            return lambda scope: value
        case Name(name=name):
            return lambda scope: scope.get(name)
        case Member() | Index():
            return _compile_path(node)
        case Call(func=func, args=(arg,)):
            impl = FUNCTIONS[func][1]
            run_arg = _compile(arg)
            return lambda scope: impl(run_arg(scope))
        case Unary(op="!", operand=operand):
            run = _compile(operand)
            return lambda scope: not truthy(run(scope))
        case Unary(operand=operand):
            run = _compile(operand)
            return lambda scope: -to_number(run(scope))
        case Logical():
            return _compile_logical(node)
        case Compare():
            return _compile_compare(node)
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _compile_path(node: Member | Index) -> Evaluator:
    """Flatten ``a.b[0][expr]`` into a base and a tuple of steps walked in one loop."""
    steps: list[tuple[str | None, int | None, Evaluator | None]] = []
    base: Node = node
    while isinstance(base, Member | Index):
        if isinstance(base, Member):
            steps.append((*key_of(base.key), None))
        elif isinstance(base.index, Literal):
            steps.append((*key_of(base.index.value), None))
        else:
            steps.append((None, None, _compile(base.index)))
        base = base.obj
    steps.reverse()

    if all(dynamic is None for _, _, dynamic in steps):
        fixed = tuple((key, index) for key, index, _ in steps)
        if isinstance(base, Name):
            root = base.name

            def walk_scope(scope: Scope) -> Any:
                value = scope.get(root)
                for key, index in fixed:
                    value = value.get(key) if type(value) is dict else lookup(value, key, index)
                    if value is None:
                        return None
                return value

            return walk_scope
        run_base = _compile(base)

        def walk_value(scope: Scope) -> Any:
            value = run_base(scope)
            for key, index in fixed:
                value = lookup(value, key, index)
                if value is None:
                    return None
            return value

        return walk_value

    run_base = _compile(base)
    mixed = tuple(steps)

    def walk_mixed(scope: Scope) -> Any:
        value = run_base(scope)
        for key, index, dynamic in mixed:
            if dynamic is not None:
                key, index = key_of(dynamic(scope))
            value = lookup(value, key, index)
            if value is None:
                return None
        return value

    return walk_mixed


def _compile_logical(node: Logical) -> Evaluator:
    """Short-circuit ``&&``/``||``; the result is always a bool (truthiness)."""
    runs = tuple(_compile(operand) for operand in node.operands)
    if len(runs) == 2:
        first, second = runs
        if node.op == "&&":
            return lambda scope: truthy(first(scope)) and truthy(second(scope))
        return lambda scope: truthy(first(scope)) or truthy(second(scope))
    if node.op == "&&":
        return lambda scope: all(truthy(run(scope)) for run in runs)
    return lambda scope: any(truthy(run(scope)) for run in runs)


def _compile_compare(node: Compare) -> Evaluator:
    """A comparison; with a literal right side its coercions are computed once."""
    op = COMPARISONS[node.op]
    run_left = _compile(node.left)
    if not isinstance(node.right, Literal):
        run_right = _compile(node.right)
        return lambda scope: compare(op, run_left(scope), run_right(scope))

    right = node.right.value
    right_number = to_number(right)
    right_text = to_text(right)
    right_is_str = isinstance(right, str)

    def compare_to_literal(scope: Scope) -> bool:
        left = run_left(scope)
        if is_number(left):
            return op(left, right_number)
        if right_is_str and isinstance(left, str):
            return op(left, right)
        return op(to_text(left), right_text)

    return compare_to_literal


class CompiledExpr:
    """A parsed and compiled expression; ``evaluate`` never parses and never raises."""

    __slots__ = ("_run", "source")  # _run is called directly inside the package (one call less)

    def __init__(self, source: str, run: Evaluator) -> None:
        self.source = source
        self._run = run

    def evaluate(self, scope: Scope) -> Any:
        """The value of the expression in ``scope`` (``input``, ``ctx``, ``steps``, ...)."""
        return self._run(scope)

    def __repr__(self) -> str:
        return f"CompiledExpr({self.source!r})"


@lru_cache(maxsize=CACHE_SIZE)
def _compile_cached(expr: str) -> CompiledExpr:
    """The one place that parses; everything else goes through this cache."""
    return CompiledExpr(expr, _compile(parse(expr)))


def compile_expr(expr: str) -> CompiledExpr:
    """Parse and compile ``expr`` once; the same string returns the same cached object.

    Raises ExpressionError (expression quoted, problem and column named) if it does not
    parse, including for an unknown function name.
    """
    if not isinstance(expr, str):
        raise ExpressionError(f"expression must be a string, got {type(expr).__name__}")
    return _compile_cached(expr)


def evaluate(expr: str, scope: Scope) -> Any:
    """Evaluate ``expr`` in ``scope`` (compiled once, cached; see ``compile_expr``)."""
    return compile_expr(expr)._run(scope)
