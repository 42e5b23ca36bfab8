"""``reply_watch.ReplyWatch``: each round trip times out ``timeout`` seconds after it
started, with one timer set again lazily (a fake loop: virtual time, timers fired by hand)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordtrio.backends.redis.reply_watch import ReplyWatch


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance_to(self, when: float) -> None:
        """Move the clock to ``when``, firing the timers due by then in order."""
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= when),
                         key=lambda t: t.when)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.when
            timer.callback()
        self.now = when


class FakeTask:
    def __init__(self) -> None:
        self.cancels = 0
        self.uncancels = 0

    def cancel(self) -> None:
        self.cancels += 1

    def uncancel(self) -> None:
        self.uncancels += 1


def a_watch(timeout: float = 30.0) -> tuple[FakeLoop, FakeTask, ReplyWatch]:
    loop, task = FakeLoop(), FakeTask()
    watch: Any = ReplyWatch(loop, task, timeout)  # type: ignore[arg-type]
    return loop, task, watch


def test_a_round_trip_that_gets_its_reply_in_time_is_left_alone() -> None:
    loop, task, watch = a_watch()
    watch.start()
    loop.advance_to(29.0)
    watch.stop()
    loop.advance_to(100.0)
    assert task.cancels == 0
    assert not watch.timed_out()


def test_a_round_trip_without_a_reply_is_cancelled_at_its_own_deadline() -> None:
    loop, task, watch = a_watch()
    watch.start()  # t=0: the timer is set for 30
    loop.advance_to(10.0)
    watch.stop()
    loop.advance_to(20.0)
    watch.start()  # t=20, the timer (for 30) is kept
    loop.advance_to(30.0)
    assert task.cancels == 0  # fired for the earlier round trip: set again for 50
    loop.advance_to(49.9)
    assert task.cancels == 0
    loop.advance_to(50.0)
    assert task.cancels == 1
    assert watch.timed_out() and task.uncancels == 1
    assert not watch.timed_out()  # taken back once


def test_the_first_round_trip_after_an_idle_spell_sets_the_timer_again() -> None:
    loop, task, watch = a_watch(timeout=1.0)
    watch.start()
    watch.stop()
    loop.advance_to(5.0)  # the timer fired while idle: not set again
    assert loop.timers == []
    watch.start()
    loop.advance_to(6.0)
    assert task.cancels == 1


def test_close_drops_the_timer() -> None:
    loop, task, watch = a_watch()
    watch.start()
    watch.close()
    loop.advance_to(100.0)
    assert task.cancels == 0
