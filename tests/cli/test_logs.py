"""Logs of the long-running commands: ``--log-level`` and UTC ISO 8601 timestamps."""

from __future__ import annotations

import io
import logging
import re

import pytest

from cordtrio.cli import build_parser
from cordtrio.cli.logs import configure_logging

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("command", [
    ["serve", "--listen", "ipc:///tmp/x.ipc"],
    ["worker", "--connect", "ipc:///tmp/x.ipc", "--handlers", "m"],
])
def test_serve_and_worker_take_a_log_level_defaulting_to_info(command: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(command).log_level == "info"
    assert parser.parse_args([*command, "--log-level", "DEBUG"]).log_level == "debug"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--log-level", "chatty"])


def test_records_carry_a_utc_timestamp_level_and_logger(restore_root_logger) -> None:
    out = io.StringIO()
    configure_logging("info", out)
    logging.getLogger("cordtrio.engine").info("engine E: took over %d run(s)", 2)
    assert re.fullmatch(STAMP + r" INFO cordtrio\.engine: engine E: took over 2 run\(s\)\n",
                        out.getvalue())


def test_the_level_filters_records(restore_root_logger) -> None:
    out = io.StringIO()
    configure_logging("warning", out)
    logging.getLogger("cordtrio.serve").info("ready")
    logging.getLogger("cordtrio.serve").warning("store slow")
    assert "ready" not in out.getvalue() and "store slow" in out.getvalue()
    configure_logging("debug", out)  # replaces its handler: each record is written once
    logging.getLogger("cordtrio.serve").debug("detail")
    assert out.getvalue().count("detail") == 1
