"""Expressions and templates (SPEC §2).

An expression such as ``steps.fetch.output.items[0].ok && input.n > '5'`` goes through a
tokenizer (``lexer``) and a recursive-descent parser (``parser``) into a small AST, which
``compiler`` turns into nested Python closures. Each distinct expression is parsed once
(``compile_expr`` is cached); evaluating it afterwards only calls closures. Python ``eval``
is never used.

Evaluation is total: a missing key, an out-of-range index or indexing something that is not
a container yields ``None`` (null). Only *parsing* raises, and always ``ExpressionError``
with the expression quoted and the 1-based column of the problem.

Templates (``template``) are strings containing ``${expr}``; ``render`` walks dicts and
lists and replaces them (a string that is exactly one ``${expr}`` keeps the value's type).
"""

from __future__ import annotations

from .compiler import CompiledExpr, compile_expr, evaluate
from .template import check_template, render
from .values import Scope, to_text, truthy

__all__ = [
    "CompiledExpr",
    "Scope",
    "check_template",
    "compile_expr",
    "evaluate",
    "render",
    "to_text",
    "truthy",
]
