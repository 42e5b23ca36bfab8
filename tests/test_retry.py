"""Transient backend failures are waited out; the process reports how many calls wait."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from cordtrio.errors import NotFoundError, StoreError
from cordtrio.retry import calls_waiting, is_transient, retrying


async def test_a_transient_failure_is_retried_and_counted_while_it_lasts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures = [StoreError("down"), ConnectionError("reset"), OSError("refused")]
    seen: list[int] = []

    async def op() -> str:
        seen.append(calls_waiting())
        if failures:
            raise failures.pop(0)
        return "done"

    assert await retrying(op, "read x") == "done"
    assert seen == [0, 1, 1, 1]  # degraded from the first failure until it succeeds
    assert calls_waiting() == 0


async def test_a_definite_error_is_raised_at_once() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError("run r: not found")

    with pytest.raises(NotFoundError):
        await retrying(op, "read r")
    assert calls == 1 and calls_waiting() == 0


async def test_cancelling_a_wait_stops_counting_it(autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    async def never() -> None:
        raise StoreError("down")

    with trio.move_on_after(30):
        await retrying(never, "write y")
    assert calls_waiting() == 0


def test_what_counts_as_transient() -> None:
    assert is_transient(StoreError("x")) and is_transient(ConnectionError())
    assert not is_transient(NotFoundError("x"))
