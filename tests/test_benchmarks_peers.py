"""The peers measured beside cordtrio: the Celery peer's availability, its waiting for
results whose notification is lost, and its failing fast when its worker exits or stalls."""

from __future__ import annotations

import math
import sys

import pytest

from benchmarks.peers.celery_bench import CeleryPeer


def test_a_peer_that_cannot_import_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # import celery -> ImportError
    reason = CeleryPeer().unavailable()
    assert reason is not None and "celery" in reason


class _Late(Exception):
    """What the fake results' ``get`` raises when its slice ends (Celery's TimeoutError)."""


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeResult:
    """A Celery result whose ``get`` answers after ``arrives_after`` slices, or never (its
    notification lost); each slice that ends without it advances the fake clock."""

    def __init__(self, task_id: str, clock: _FakeClock, arrives_after: float) -> None:
        self.id = task_id
        self.clock = clock
        self.slices_left = arrives_after
        self.gets = 0

    def get(self, *, timeout: float, disable_sync_subtasks: bool) -> object:
        self.gets += 1
        if self.slices_left <= 0:
            return {"ok": True}
        self.slices_left -= 1
        self.clock.now += timeout
        raise _Late


def _collect(results: list[_FakeResult], clock: _FakeClock, stored: dict[str, str],
             exit_reason: str | None = None, keys: list[int] | None = None) -> object:
    from benchmarks.peers.celery_wait import collect

    counts = iter(keys or [])
    return collect(results, stored_status=lambda tid: stored.get(tid, "PENDING"),
                   worker_exit=lambda: exit_reason,
                   progress=lambda: next(counts, 0), timeout_error=_Late,
                   timeout=600, stall=60, clock=clock)


def test_celery_results_whose_notification_is_lost_are_read_from_the_backend() -> None:
    from benchmarks.peers.celery_wait import SLICE, Collected

    clock = _FakeClock()
    slow = _FakeResult("slow", clock, arrives_after=3)  # notified after 3 slices
    lost = _FakeResult("lost", clock, arrives_after=math.inf)  # stored, never notified
    got = _collect([slow, lost], clock, stored={"lost": "SUCCESS"})
    assert got == Collected(results=2, read_stored=1)
    assert slow.gets == 4 and lost.gets == 2  # then handed back to Celery once
    assert clock.now == 5 * SLICE  # not the whole timeout (this fake never answers get)


def test_the_celery_peer_fails_fast_when_its_worker_exits_or_stalls() -> None:
    from benchmarks.peers.celery_wait import PeerStalled

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match=r"worker exited \(exit code 1; stderr: boom\)"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {}, "exit code 1; stderr: boom")
    assert clock.now < 1  # at the first slice, not after the timeout

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match=r"no celery progress for 60 s .* 1 of 2 results in, "
                                          r"waiting for task b \(state PENDING\)"):
        _collect([_FakeResult("a", clock, 0), _FakeResult("b", clock, math.inf)], clock, {})
    assert 60 < clock.now < 61

    clock = _FakeClock()  # the server's keys keep growing: the worker is getting on
    with pytest.raises(PeerStalled, match="not in after 600 s"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {}, keys=list(range(2000)))

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match="task a ended FAILURE"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {"a": "FAILURE"})
