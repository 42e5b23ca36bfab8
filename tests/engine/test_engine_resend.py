"""A job without a result is published again (SPEC §13), so that a result lost with an
engine, or a job lost with a restarted router, is run again: the bus ignores a job it still
owns, so a job that is merely slow runs once."""

from __future__ import annotations

import trio
from test_engine_kit import WF, step, succeed

from cordtrio.backends.memory import MemoryBus
from cordtrio.engine import open_engine
from cordtrio.engine.supervisor import DEFAULT_RESEND_AFTER, Engine
from cordtrio.model import RunStatus, StepStatus
from cordtrio.protocol import JobResult, JobStatus
from cordtrio.worker import Job, open_worker


async def test_a_running_job_is_published_again_at_the_resend_interval(
        engine, store, save, submits, bus: MemoryBus, autojump_clock):
    await save(step("a", for_each="input.xs"))
    t0 = trio.current_time()
    run_id = await engine.submit(WF, {"xs": [1, 2]})
    await trio.sleep(2.5 * DEFAULT_RESEND_AFTER)
    child = f"{run_id}:a[0]@1"
    times = [t - t0 for t in submits.times_of(child)]
    assert times == [0, DEFAULT_RESEND_AFTER, 2 * DEFAULT_RESEND_AFTER]
    again = [p for p in submits.payloads if p.job_id == child]
    assert all(p == again[0] for p in again)  # same id, env and payload pointer
    assert bus.jobs.pending == 2 and bus.jobs.duplicates == 4  # still queued: absorbed
    await succeed(engine, child)
    await trio.sleep(2 * DEFAULT_RESEND_AFTER)
    assert submits.times_of(child) == submits.times_of(child)[:3]  # done: no more
    assert len(submits.times_of(f"{run_id}:a[1]@1")) == 5


async def test_a_result_lost_on_the_way_is_recovered_by_running_the_job_again(
        store, payloads, save, autojump_clock, monkeypatch):
    """The worker published its result and acknowledged the job, but the result never
    reached the run (an engine that took it crashed): the job runs again."""
    await save(step("a"))
    bus = MemoryBus()
    runs: list[str] = []
    lose_first = [True]

    async def handler(job: Job) -> dict[str, int]:
        runs.append(job.job_id)
        return {"n": len(runs)}

    original = Engine._on_job_result

    def lossy(engine: Engine, result: JobResult) -> None:  # the first result goes nowhere
        if lose_first[0] and result.status == JobStatus.SUCCEEDED:
            lose_first[0] = False
            return
        original(engine, result)

    monkeypatch.setattr(Engine, "_on_job_result", lossy)
    async with (
        open_engine(store, bus, payloads=payloads) as engine,
        open_worker(bus, payloads, {"job.test": handler}),
    ):
        run_id = await engine.submit(WF)
        with trio.fail_after(10 * DEFAULT_RESEND_AFTER):
            run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.steps["a"].status == StepStatus.SUCCEEDED and run.steps["a"].attempts == 1
    assert runs == [f"{run_id}:a@1"] * 2  # at least once: the handler ran twice


async def test_a_slow_job_held_by_a_live_worker_runs_once(store, payloads, save,
                                                          autojump_clock):
    await save(step("a"))
    bus = MemoryBus()
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append(job.job_id)
        await trio.sleep(10.5 * DEFAULT_RESEND_AFTER)  # (not on a sweep)

    async with (
        open_engine(store, bus, payloads=payloads) as engine,
        open_worker(bus, payloads, {"job.test": slow}),
    ):
        run_id = await engine.submit(WF)
        run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert runs == [f"{run_id}:a@1"]
    assert bus.jobs.duplicates >= 9


async def test_resend_after_zero_publishes_nothing_again(store, payloads, save, submits, bus,
                                                          autojump_clock):
    await save(step("a"))
    async with open_engine(store, bus, payloads=payloads, resend_after=0) as engine:
        run_id = await engine.submit(WF)
        await trio.sleep(5 * DEFAULT_RESEND_AFTER)
    assert submits.job_ids == [f"{run_id}:a@1"]
