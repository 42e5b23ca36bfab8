"""``RateLimitedLog``: one line per kind per interval, and a count of what was dropped."""

from __future__ import annotations

import logging

import pytest

from cordtrio.ratelog import RateLimitedLog, rate_limited


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_within_the_interval_are_counted_then_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 60, clock=clock)
    caplog.set_level(logging.WARNING, logger="test.ratelog")
    assert limited.warning("frame", "dropped frame %d", 1)
    for i in range(2, 50):
        clock.now += 1
        assert not limited.warning("frame", "dropped frame %d", i)
    assert limited.warning("other", "a different kind is not held back")
    assert limited.suppressed("frame") == 48
    clock.now = 61
    assert limited.warning("frame", "dropped frame %d", 50)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["dropped frame 1", "a different kind is not held back",
                        "dropped frame 50 (48 similar suppressed in the last 61s)"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    clock.now = 200  # a quiet spell: the next line says nothing was suppressed
    assert limited.warning("frame", "dropped frame %d", 51)
    assert caplog.records[-1].getMessage() == "dropped frame 51"


def test_a_disabled_level_logs_nothing_and_shared_instances_are_per_logger() -> None:
    logger = logging.getLogger("test.ratelog.quiet")
    logger.setLevel(logging.ERROR)
    assert not RateLimitedLog(logger).warning("k", "nothing")
    assert rate_limited(logger) is rate_limited(logger)
    assert rate_limited(logger) is not rate_limited(logging.getLogger("test.ratelog.x"))
