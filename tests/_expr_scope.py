"""The scope shared by the expression tests (SPEC §2): every file evaluates against it."""

from __future__ import annotations

from typing import Any

from cordtrio.expr import evaluate

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
