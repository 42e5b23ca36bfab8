"""Output of the process commands: rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console


def console() -> Console:
    """A console on stdout, 120 columns wide when not a terminal (tables stay readable)."""
    out = Console(file=sys.stdout)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(file=sys.stdout, width=120)
    return out


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str), flush=True)


__all__ = ["add_json_argument", "console", "print_json"]
