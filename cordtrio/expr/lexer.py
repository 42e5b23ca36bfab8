"""Tokenizer of the expression language.

A hand-written scanner (quotes with escapes, so ``a == 'x>y'`` is one comparison). Problems
are raised as ``SyntaxProblem`` (message + column); ``parser.parse`` adds the expression.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NamedTuple

__all__ = ["SyntaxProblem", "Token", "quote", "tokenize"]


class Token(NamedTuple):
    """A lexeme. ``kind`` is num, str, name, member (a key after ``.``), op or end."""

    kind: str
    value: Any
    col: int  # 1-based column in the expression


_SPACE: Final = re.compile(r"\s*")
_NUMBER: Final = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMBER: Final = re.compile(r"[A-Za-z0-9_]+")
_OPERATOR: Final = re.compile(r"==|!=|>=|<=|&&|\|\||[<>!()\[\].,\-]")
_HEX4: Final = re.compile(r"[0-9A-Fa-f]{4}")
_ESCAPES: Final = {
    "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f",
    "\\": "\\", "'": "'", '"': '"', "/": "/",
}  # fmt: skip
_HINTS: Final = {"=": " (did you mean '=='?)", "&": " (did you mean '&&'?)",
                 "|": " (did you mean '||'?)"}  # fmt: skip


def quote(text: str) -> str:
    """Quote an expression or template for an error message (long ones are shortened)."""
    if len(text) > 120:
        text = text[:117] + "..."
    return json.dumps(text, ensure_ascii=False)


class SyntaxProblem(Exception):
    """What is wrong and at which 1-based column (0: the whole expression); ``parser.parse``
    turns it into an ExpressionError that quotes the expression."""

    def __init__(self, message: str, col: int, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.col = col
        self.hint = hint


def _lex_string(source: str, start: int) -> tuple[str, int]:
    """Read the quoted string at ``start``; return its value and the index after it."""
    closing = source[start]
    out: list[str] = []
    i, n = start + 1, len(source)
    while i < n:
        ch = source[i]
        if ch == closing:
            return "".join(out), i + 1
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            break
        esc = source[i + 1]
        if esc != "u":
            if esc not in _ESCAPES:
                raise SyntaxProblem(f"unknown escape '\\{esc}' in string", i + 1)
            out.append(_ESCAPES[esc])
            i += 2
            continue
        code = _unicode_escape(source, i)
        if 0xD800 <= code < 0xDC00:  # high surrogate: must pair with a low one (JSON style)
            low = _unicode_escape(source, i + 6) if source.startswith("\\u", i + 6) else -1
            if not 0xDC00 <= low < 0xE000:
                raise SyntaxProblem("unpaired surrogate in \\u escape", i + 1)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            i += 6
        elif 0xDC00 <= code < 0xE000:
            raise SyntaxProblem("unpaired surrogate in \\u escape", i + 1)
        out.append(chr(code))
        i += 6
    raise SyntaxProblem("unterminated string", start + 1)


def _unicode_escape(source: str, i: int) -> int:
    """The code of the ``\\uXXXX`` escape at index ``i``."""
    digits = source[i + 2 : i + 6]
    if not _HEX4.fullmatch(digits):
        raise SyntaxProblem("\\u escape needs 4 hex digits", i + 1)
    return int(digits, 16)


def tokenize(source: str) -> list[Token]:
    """Split an expression into tokens; the last one is always ``end``."""
    tokens: list[Token] = []
    pos, n = 0, len(source)
    after_dot = False
    while True:
        pos = _SPACE.match(source, pos).end()  # type: ignore[union-attr]  # \s* always matches
        if pos >= n:
            break
        col = pos + 1
        ch = source[pos]
        if after_dot and (m := _MEMBER.match(source, pos)):
            tokens.append(Token("member", m.group(), col))
            pos = m.end()
        elif ch in "'\"":
            value, pos = _lex_string(source, pos)
            tokens.append(Token("str", value, col))
        elif m := _NUMBER.match(source, pos):
            text = m.group()
            try:
                number: int | float = float(text) if m.group(1) or m.group(2) else int(text)
            except ValueError:  # more digits than Python converts
                raise SyntaxProblem("number too long", col) from None
            tokens.append(Token("num", number, col))
            pos = m.end()
        elif m := _NAME.match(source, pos):
            tokens.append(Token("name", m.group(), col))
            pos = m.end()
        elif m := _OPERATOR.match(source, pos):
            tokens.append(Token("op", m.group(), col))
            pos = m.end()
        else:
            raise SyntaxProblem(f"unexpected character {ch!r}", col, _HINTS.get(ch, ""))
        after_dot = tokens[-1].kind == "op" and tokens[-1].value == "."
    tokens.append(Token("end", None, len(source.rstrip()) + 1))
    return tokens
