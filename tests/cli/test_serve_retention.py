"""``cordtrio serve --retention``: durations, and a bad one refused before anything starts."""

from __future__ import annotations

import pytest

from cordtrio.cli import main
from cordtrio.cli.serve import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("90s", 90), ("3600", 3600),
    ("0", 0), ("1w", 7 * 86400), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1d", "7x", "inf", "nan"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_serve_refuses_a_bad_retention_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--listen", "ipc:///tmp/nope.ipc", "--redis",
                   "redis://127.0.0.1:1/0", "--retention", "soon"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "cordtrio: error: --retention: bad duration 'soon': expected e.g. 7d, 12h, 30m, 90s "
        "or 0"]
