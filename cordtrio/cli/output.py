"""Output of the process commands: rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from enum import Enum
from typing import Any

from rich.console import Console

from ..timeutil import format_ts


def console() -> Console:
    """A console on stdout, 120 columns wide when not a terminal (tables stay readable)."""
    out = Console(file=sys.stdout)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(file=sys.stdout, width=120)
    return out


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def json_default(value: Any) -> Any:
    """``json.dumps`` ``default`` of every ``--json`` output: datetimes as RFC 3339 UTC
    (``2026-12-02T23:03:11.761171Z``, as in stored documents), enums as their values."""
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, Enum):
        return value.value
    return str(value)


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=json_default)


def print_json(value: Any) -> None:
    print(json_text(value), flush=True)


__all__ = ["add_json_argument", "console", "json_default", "json_text", "print_json"]


def error_text(error: dict[str, Any]) -> str:
    """A step's or run's error for people: ``KeyError: 'missing'`` when the worker said
    what kind of failure it was (``code``), else the message alone."""
    message = " ".join(str(error.get("message", "")).split())
    code = str(error.get("code") or "")
    if code and not message.startswith(code):
        return f"{code}: {message}" if message else code
    return message

