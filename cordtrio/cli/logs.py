"""Logging of the long-running commands (``serve``, ``worker``): one line per record on
stderr, ``2026-01-02T03:04:05.678Z INFO cordtrio.engine: message``, timestamps in UTC
(ISO 8601), the threshold set by ``--log-level``."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    """Stamps each record with its time as RFC 3339 / ISO 8601 UTC, to the millisecond."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a record is written (it may be replaced later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LEVELS, default="info", type=str.lower,
                        help="least severe log records to print (default info)")


def configure_logging(level: str, stream: TextIO | None = None) -> logging.Handler:
    """Send log records of ``level`` and above to ``stream`` (default stderr), replacing any
    handler an earlier call installed; returns the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cordtrio", False)]:
        root.removeHandler(old)
    handler: Any = logging.StreamHandler(stream if stream is not None else _CurrentStderr())
    handler._cordtrio = True
    handler.setFormatter(UTCFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler  # type: ignore[no-any-return]


__all__ = ["LEVELS", "UTCFormatter", "add_log_level_argument", "configure_logging"]
