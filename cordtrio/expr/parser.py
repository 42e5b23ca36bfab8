"""Recursive-descent parser of the expression language into a small immutable AST."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ExpressionError
from .lexer import SyntaxProblem, Token, quote, tokenize
from .values import FUNCTIONS, is_number, to_text

__all__ = [
    "MAX_DEPTH",
    "MAX_NESTING",
    "Call",
    "Compare",
    "Index",
    "Literal",
    "Logical",
    "Member",
    "Name",
    "Node",
    "Unary",
    "parse",
]

#: Deepest AST accepted; bounds the recursion of compiling and of evaluating.
MAX_DEPTH: Final = 64
#: Deepest nesting of ``(``, ``[`` and call arguments; bounds the parser's recursion.
MAX_NESTING: Final = 32
_KEYWORD_LITERALS: Final[dict[str, Any]] = {"true": True, "false": False, "null": None}


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: number, string, true, false or null."""

    value: Any


@dataclass(frozen=True, slots=True)
class Name:
    """A root identifier, looked up in the scope."""

    name: str


@dataclass(frozen=True, slots=True)
class Member:
    """``obj.key``"""

    obj: Node
    key: str


@dataclass(frozen=True, slots=True)
class Index:
    """``obj[index]``"""

    obj: Node
    index: Node


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args...)``; ``func`` is a known function (checked when parsing)."""

    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Unary:
    """``!x`` (also ``not x``) or ``-x``."""

    op: str  # "!" or "-"
    operand: Node


@dataclass(frozen=True, slots=True)
class Logical:
    """An n-ary ``&&`` or ``||`` chain (flat, so long chains do not nest)."""

    op: str  # "&&" or "||"
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right`` with op one of ``== != > < >= <=``."""

    op: str
    left: Node
    right: Node


Node = Literal | Name | Member | Index | Call | Unary | Logical | Compare


def _depth(root: Node) -> int:
    """Depth of the closures the AST compiles to (paths are flattened, so ``a.b.c`` is 1)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        match node:
            case Member(obj=obj):
                stack.append((obj, d))
            case Index(obj=obj, index=index):
                stack += [(obj, d), (index, d + 1)]
            case Call(args=children) | Logical(operands=children):
                stack += [(c, d + 1) for c in children]
            case Unary(operand=operand):
                stack.append((operand, d + 1))
            case Compare(left=left, right=right):
                stack += [(left, d + 1), (right, d + 1)]
    return deepest


class _Parser:
    """Recursive descent over the grammar (lowest precedence first)::

    expr    := and ( ('||' | 'or') and )*
    and     := eq ( ('&&' | 'and') eq )*
    eq      := cmp ( ('==' | '!=') cmp )*
    cmp     := unary ( ('>' | '<' | '>=' | '<=') unary )*
    unary   := ('!' | 'not' | '-')* postfix
    postfix := primary ( '.' key | '[' expr ']' )*
    primary := number | string | true | false | null | name | name '(' args ')'
             | '(' expr ')'
    """

    def __init__(self, source: str) -> None:
        self.tokens = tokenize(source)
        self.pos = 0
        self.nesting = 0

    @property
    def peek(self) -> Token:
        """The next token, not consumed."""
        return self.tokens[self.pos]

    def advance(self) -> Token:
        """Consume and return the next token."""
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def at(self, *ops: str) -> bool:
        """Is the next token one of these operators (or ``and``/``or``/``not`` words)?"""
        tok = self.tokens[self.pos]
        return tok.kind in ("op", "name") and tok.value in ops

    def unexpected(self, tok: Token, expected: str = "") -> SyntaxProblem:
        """The problem to raise for ``tok`` (with what was expected, if known)."""
        what = "end" if tok.kind == "end" else _describe(tok)
        hint = f" (expected {expected})" if expected else ""
        if not expected and tok.kind == "op" and tok.value == "-":
            hint = " (there is no subtraction; write a key containing '-' as ['my-key'])"
        return SyntaxProblem(f"unexpected {what}", tok.col, hint)

    def expect(self, op: str) -> None:
        """Consume the operator ``op`` or fail naming it."""
        if not self.at(op) or self.peek.kind != "op":
            raise self.unexpected(self.peek, f"'{op}'")
        self.pos += 1

    def parse(self) -> Node:
        """The whole expression; trailing tokens and over-deep trees are errors."""
        if self.peek.kind == "end":
            raise SyntaxProblem("empty expression", 0)
        node = self.expression()
        if self.peek.kind != "end":
            raise self.unexpected(self.peek, "" if self.at("-") else "an operator or the end")
        if _depth(node) > MAX_DEPTH:
            raise SyntaxProblem(f"nested more than {MAX_DEPTH} levels deep", 0)
        return node

    def expression(self) -> Node:
        """A full (sub-)expression; counts nesting to bound the recursion."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise SyntaxProblem(f"nested more than {MAX_NESTING} levels deep", self.peek.col)
        try:
            return self.logical("||", "or", self.conjunction)
        finally:
            self.nesting -= 1

    def conjunction(self) -> Node:
        """``&&`` / ``and``."""
        return self.logical("&&", "and", self.equality)

    def logical(self, symbol: str, word: str, operand: Callable[[], Node]) -> Node:
        """An n-ary chain of ``symbol``/``word`` (``&&``/``and``, ``||``/``or``)."""
        operands = [operand()]
        while self.at(symbol, word):
            self.pos += 1
            operands.append(operand())
        return operands[0] if len(operands) == 1 else Logical(symbol, tuple(operands))

    def equality(self) -> Node:
        """``==`` and ``!=``."""
        return self.binary(("==", "!="), self.comparison)

    def comparison(self) -> Node:
        """``> < >= <=``."""
        return self.binary((">", "<", ">=", "<="), self.unary)

    def binary(self, ops: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        """A left-associative chain of comparisons (``a == b == c`` is ``(a == b) == c``)."""
        left = operand()
        while self.peek.kind == "op" and self.peek.value in ops:
            op = self.advance().value
            left = Compare(op, left, operand())
        return left

    def unary(self) -> Node:
        """Prefix ``!``/``not``/``-`` (a loop, not recursion); ``-<number>`` is folded."""
        ops: list[str] = []
        while self.at("!", "not", "-"):
            ops.append("-" if self.advance().value == "-" else "!")
        node = self.postfix()
        for op in reversed(ops):
            if op == "-" and isinstance(node, Literal) and is_number(node.value):
                node = Literal(-node.value)  # fold, so that x[-1] is a constant index
            else:
                node = Unary(op, node)
        return node

    def postfix(self) -> Node:
        """``.key`` and ``[expr]`` after a primary."""
        node = self.primary()
        while self.peek.kind == "op" and self.peek.value in (".", "["):
            if self.advance().value == ".":
                key = self.advance()
                if key.kind != "member":
                    raise self.unexpected(key, "a key after '.'")
                node = Member(node, key.value)
            else:
                index = self.expression()
                self.expect("]")
                node = Index(node, index)
        return node

    def primary(self) -> Node:
        """A literal, a root name, a function call or a parenthesised expression."""
        tok = self.advance()
        if tok.kind in ("num", "str"):
            return Literal(tok.value)
        if tok.kind == "name" and tok.value not in ("and", "or", "not"):
            if tok.value in _KEYWORD_LITERALS:
                return Literal(_KEYWORD_LITERALS[tok.value])
            if self.peek.kind == "op" and self.peek.value == "(":
                return self.call(tok)
            return Name(tok.value)
        if tok.kind == "op" and tok.value == "(":
            node = self.expression()
            self.expect(")")
            return node
        raise self.unexpected(tok)

    def call(self, name: Token) -> Node:
        """``name(args)``; unknown names and wrong arity fail here, not at evaluation."""
        if name.value not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise SyntaxProblem(f"unknown function '{name.value}'", name.col, f" (known: {known})")
        self.pos += 1  # "("
        args: list[Node] = []
        if not self.at(")"):
            args.append(self.expression())
            while self.at(","):
                self.pos += 1
                args.append(self.expression())
        self.expect(")")
        arity = FUNCTIONS[name.value][0]
        if len(args) != arity:
            raise SyntaxProblem(f"{name.value}() takes {arity} argument, got {len(args)}", name.col)
        return Call(name.value, tuple(args))


def _describe(tok: Token) -> str:
    """A token as an error message shows it."""
    if tok.kind == "str":
        return f"string {quote(tok.value)}"
    if tok.kind == "num":
        return f"number {to_text(tok.value)}"
    return f"'{tok.value}'"


def parse(source: str) -> Node:
    """Parse an expression into its AST; raises ExpressionError naming the problem."""
    try:
        return _Parser(source).parse()
    except SyntaxProblem as problem:
        at = f" at column {problem.col}" if problem.col else ""
        where = f"{problem.message}{at}{problem.hint}"
        raise ExpressionError(f"expression {quote(source)}: {where}") from None
