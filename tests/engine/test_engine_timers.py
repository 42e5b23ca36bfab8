"""Timers on Trio's clock (SPEC §12): backoffs, delays and timeouts of minutes or hours run
instantly under ``MockClock(autojump_threshold=0)``; every test here checks that too."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio
from test_engine_kit import T0, WF, Tap, fail, ok, started, step, tapping, timeline_types

from cordtrio.backends.memory import MemoryBus
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.model import RetryConfig, RunStatus, StepStatus, StepType
from cordtrio.protocol import SUBJECT_CANCEL, SUBJECT_SUBMIT
from cordtrio.testing import PlainBus

# Seconds of real time per test, for minutes to hours of virtual time. Generous so that a
# loaded CI machine never trips it; a real wait of even one backoff would.
REAL_TIME_BUDGET = 5.0


@pytest.fixture(autouse=True)
def fast() -> Iterator[None]:
    started = time.perf_counter()
    yield
    assert time.perf_counter() - started < REAL_TIME_BUDGET


async def failing_worker(engine, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answers every job with FAILED at once (no real worker: no handler timing)."""
    async with engine.bus.subscribe(SUBJECT_SUBMIT) as jobs:
        task_status.started()
        async for packet in jobs:
            await engine.handle_job_result(fail(packet.payload.job_id, "flaky"))


async def test_retry_backoff_of_minutes_follows_the_table(
        engine, store, save, submits, autojump_clock):
    retry = RetryConfig(max_retries=3, initial_backoff_sec=300, multiplier=2)
    await save(step("a", retry=retry))
    async with trio.open_nursery() as nursery:
        await nursery.start(failing_worker, engine)
        t0 = trio.current_time()
        run_id = await engine.submit(WF)
        run = await engine.wait_run(run_id)
        nursery.cancel_scope.cancel()

    # attempt n+1 is dispatched 300 * 2^(n-1) s after attempt n failed (failures are
    # immediate)
    times = [t - t0 for t in submits.times_of(f"{run_id}:a@")]
    assert times == pytest.approx([0, 300, 300 + 600, 300 + 600 + 1200], abs=1e-3)
    assert submits.job_ids == [f"{run_id}:a@{n}" for n in (1, 2, 3, 4)]
    assert run.status == RunStatus.FAILED
    assert run.steps["a"].attempts == 4 and run.steps["a"].error == {"message": "flaky"}
    retries = [e for e in await store.list_timeline_events(run_id, 1000)
               if e.type == "step_retry_scheduled"]
    assert [e.data["backoff_sec"] for e in retries] == [300, 600, 1200]


async def test_backoff_is_capped_by_max_backoff(engine, save, submits, autojump_clock):
    retry = RetryConfig(max_retries=3, initial_backoff_sec=300, multiplier=10,
                        max_backoff_sec=1000)
    await save(step("a", retry=retry))
    async with trio.open_nursery() as nursery:
        await nursery.start(failing_worker, engine)
        t0 = trio.current_time()
        await engine.wait_run(await engine.submit(WF))
        nursery.cancel_scope.cancel()
    times = [t - t0 for t in submits.times_of("")]
    assert times == pytest.approx([0, 300, 1300, 2300], abs=1e-3)


async def test_delay_of_hours_completes(engine, store, save, submits, autojump_clock):
    await save(step("nap", type=StepType.DELAY, delay_sec=3 * 3600),
               step("after", depends_on=["nap"]))
    t0 = trio.current_time()
    run_id = await engine.submit(WF)
    await trio.sleep(3 * 3600 - 1)
    assert submits.payloads == []
    assert (await store.get_run(run_id)).steps["nap"].status == StepStatus.RUNNING
    await trio.sleep(2)
    run = await store.get_run(run_id)
    assert run.steps["nap"].status == StepStatus.SUCCEEDED
    assert run.steps["after"].status == StepStatus.RUNNING
    assert submits.items[0][0] - t0 == pytest.approx(3 * 3600, abs=1e-3)
    started = [e for e in await store.list_timeline_events(run_id) if
               e.type == "step_delay_started"]
    assert started[0].data["delay_ms"] == 3 * 3600 * 1000
    assert "step_delay_completed" in await timeline_types(store, run_id, "nap")


async def test_step_timeout_counts_from_the_workers_start_not_the_queue(
        engine, store, save, submits, cancels, autojump_clock):
    await save(step("slow", timeout_sec=30))
    t0 = trio.current_time()
    run_id = await engine.submit(WF)
    job = f"{run_id}:slow@1"
    await trio.sleep(100)  # queued behind other work for 100 s: no timeout
    assert (await store.get_run(run_id)).steps["slow"].status == StepStatus.RUNNING
    await started(engine.bus, job)
    await trio.sleep(29)
    assert (await store.get_run(run_id)).steps["slow"].status == StepStatus.RUNNING
    run = await engine.wait_run(run_id)
    assert run.steps["slow"].status == StepStatus.TIMED_OUT
    assert [c.job_id for c in cancels.payloads] == [job]
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([130], abs=1e-3)


async def test_a_later_start_of_the_same_job_restarts_its_timeout(
        engine, store, save, submits, cancels, autojump_clock):
    await save(step("slow", timeout_sec=30))
    t0 = trio.current_time()
    run_id = await engine.submit(WF)
    job = f"{run_id}:slow@1"
    await started(engine.bus, job)
    await trio.sleep(20)
    await started(engine.bus, job)  # its worker was lost: another one started it again
    run = await engine.wait_run(run_id)
    assert run.steps["slow"].status == StepStatus.TIMED_OUT
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([50], abs=1e-3)


async def test_step_timeout_cancels_the_job_and_retries_as_timeout(
        store, save, autojump_clock):
    """Over a bus whose workers don't report starts, the timeout counts from dispatch."""
    retry = RetryConfig(max_retries=2, initial_backoff_sec=10)
    await save(step("slow", timeout_sec=30, retry=retry))
    bus = PlainBus(MemoryBus())
    async with (
        tapping(bus, SUBJECT_SUBMIT) as submits,
        tapping(bus, SUBJECT_CANCEL) as cancels,
        open_engine(store, bus, clock=TrioWallClock(start=T0)) as engine,
    ):
        t0 = trio.current_time()
        run_id = await engine.submit(WF)  # nobody answers
        run = await engine.wait_run(run_id)
    await _check_three_timeouts(run, run_id, t0, submits, cancels)


async def _check_three_timeouts(run, run_id: str, t0: float, submits: Tap, cancels: Tap
                                ) -> None:
    job = f"{run_id}:slow@"
    # dispatch at 0, timeout at 30, backoff 10 → 40, timeout 70, backoff 20 → 90, timeout 120
    assert [t - t0 for t in submits.times_of(job)] == pytest.approx([0, 40, 90], abs=1e-3)
    assert [c.job_id for c in cancels.payloads] == [f"{job}1", f"{job}2", f"{job}3"]
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([30, 70, 120], abs=1e-3)
    assert {c.reason for c in cancels.payloads} == {"step timed out"}
    assert submits.payloads[0].budget.deadline_ms == 30_000
    assert run.status == RunStatus.TIMED_OUT
    assert run.steps["slow"].status == StepStatus.TIMED_OUT
    assert run.steps["slow"].attempts == 3
    assert "timed out" in run.steps["slow"].error["message"]


async def test_step_timeout_does_not_fire_after_a_result(
        engine, store, save, submits, cancels, autojump_clock):
    await save(step("a", timeout_sec=30), step("b", depends_on=["a"]))
    run_id = await engine.submit(WF)
    await trio.sleep(10)
    await engine.handle_job_result(ok(f"{run_id}:a@1"))
    await trio.sleep(3600)
    run = await store.get_run(run_id)
    assert run.steps["a"].status == StepStatus.SUCCEEDED
    assert run.steps["b"].status == StepStatus.RUNNING
    assert cancels.payloads == []


async def test_workflow_timeout_times_the_run_out(
        engine, store, save, submits, cancels, autojump_clock):
    await save(step("a"), step("fan", for_each="input.items"), step("b", depends_on=["a"]),
               timeout_sec=600)
    t0 = trio.current_time()
    run_id = await engine.submit(WF, {"items": [1, 2]})
    running = set(submits.job_ids)
    assert len(running) == 3
    run = await engine.wait_run(run_id)

    assert run.status == RunStatus.TIMED_OUT
    assert (run.completed_at - run.started_at).total_seconds() == pytest.approx(600, abs=1e-3)
    assert {c.job_id for c in cancels.payloads} == running
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([600] * 3, abs=1e-3)
    assert run.steps["a"].status.is_terminal and "b" not in run.steps
    events = [e for e in await store.list_timeline_events(run_id) if e.type == "run_status"]
    assert (events[-1].status, events[-1].message) == ("timed_out", "run timed out")
    await trio.sleep(3600)
    assert engine.active_runs == 0 and len(cancels.payloads) == 3


async def test_a_timeout_under_a_millisecond_times_out_a_job_a_worker_runs(
        store, bus, payloads, clock, save, autojump_clock):
    """SPEC §6: a positive ``timeout_sec`` too short for a whole millisecond of deadline
    (its job's ``Budget(deadline_ms=0)``) still counts: the worker reports the job's start,
    and the engine times the step from there."""
    from cordtrio.worker import open_worker

    async def hang(job: object) -> dict[str, object]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    await save(step("slow", timeout_sec=0.0004))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine, \
            open_worker(bus, payloads, {"job.test": hang}):
        run_id = await engine.submit(WF)
        with trio.fail_after(60):
            run = await engine.wait_run(run_id)
    assert run.steps["slow"].status == StepStatus.TIMED_OUT
