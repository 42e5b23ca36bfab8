"""Restarting the engine (SPEC §12): a new engine over the same store and bus re-arms the
timers a stored run implies and publishes the current attempt of every running job again
(same job id: the job may have died with the old engine; a bus that still owns it absorbs
the duplicate)."""

from __future__ import annotations

import pytest
import trio
from test_engine_kit import create_pending_run, fail, step, succeed, workflow

from cordtrio.engine import open_engine
from cordtrio.model import RetryConfig, RunStatus, StepStatus, StepType

BACKOFF, NAP = 300, 2 * 3600
# (the engines here do not publish jobs again while they wait: test_engine_resend.py does)


@pytest.fixture
async def saved(store):
    for wf in (
        workflow(step("a", retry=RetryConfig(max_retries=2, initial_backoff_sec=BACKOFF)),
                 id="backoff"),
        workflow(step("nap", type=StepType.DELAY, delay_sec=NAP), id="delay"),
        workflow(step("gate", type=StepType.APPROVAL), step("w", depends_on=["gate"]),
                 id="approval"),
        workflow(step("r"), step("s", depends_on=["r"]), id="running"),
        workflow(step("t", timeout_sec=1000), id="timeout"),
    ):
        await store.save_workflow(wf)


async def test_a_new_engine_resumes_every_kind_of_wait(
        store, bus, payloads, clock, submits, saved, autojump_clock):
    def engine():
        return open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0)

    t0 = trio.current_time()
    async with engine() as first:
        backoff = await first.submit("backoff")
        await first.handle_job_result(fail(f"{backoff}:a@1"))  # retry due at t0 + 300
        delay = await first.submit("delay")  # done at t0 + 2 h
        approval = await first.submit("approval")
        running = await first.submit("running")
        await trio.sleep(50)
    assert first.active_runs == 0  # leaving the block ended every run task...
    assert (await store.get_run(backoff)).steps["a"].status == StepStatus.PENDING  # ...not runs
    assert (await store.get_run(delay)).steps["nap"].status == StepStatus.RUNNING
    assert (await store.get_run(approval)).status == RunStatus.WAITING
    assert (await store.get_run(running)).steps["r"].status == StepStatus.RUNNING
    await trio.sleep(100)  # the engine is down for a while
    seen = len(submits.payloads)

    async with engine() as second:
        assert second.active_runs == 4
        await trio.testing.wait_all_tasks_blocked()
        # the running job is published again, same id; the bus still had it queued
        assert [r.job_id for r in submits.new(seen)] == [f"{running}:r@1"]
        assert bus.jobs.duplicates == 1 and bus.jobs.owns(f"{running}:r@1")

        await trio.sleep(BACKOFF - 150 + 1)
        assert [t - t0 for t in submits.times_of(f"{backoff}:a@2")] == pytest.approx(
            [BACKOFF], abs=1e-3)  # the backoff timer was re-armed from next_attempt_at
        await succeed(second, f"{backoff}:a@2")
        assert (await store.get_run(backoff)).status == RunStatus.SUCCEEDED

        await second.approve_step(approval, "gate")
        assert submits.job_ids[-1] == f"{approval}:w@1"
        await succeed(second, f"{approval}:w@1")
        assert (await store.get_run(approval)).status == RunStatus.SUCCEEDED

        await succeed(second, f"{running}:r@1")  # the result of a job from before
        await succeed(second, f"{running}:s@1")
        assert (await store.get_run(running)).status == RunStatus.SUCCEEDED
        assert submits.job_ids.count(f"{running}:r@1") == 2

        run = await second.wait_run(delay)
        assert run.status == RunStatus.SUCCEEDED
        assert trio.current_time() - t0 == pytest.approx(NAP, abs=1.01)  # wait_run polls 1 s
        assert (run.completed_at - run.started_at).total_seconds() == pytest.approx(NAP)
        assert second.active_runs == 0


async def test_timers_that_fell_due_while_down_fire_at_once(
        store, bus, payloads, clock, submits, saved, autojump_clock):
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as first:
        backoff = await first.submit("backoff")
        await first.handle_job_result(fail(f"{backoff}:a@1"))
        delay = await first.submit("delay")
    await trio.sleep(NAP + 60)  # down for longer than both waits
    t1 = trio.current_time()
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as second:
        assert (await second.wait_run(delay)).status == RunStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()  # (blocked tasks take priority over
        assert trio.current_time() == t1  # the autojump: no time passed)
        assert submits.times_of(f"{backoff}:a@2") == pytest.approx([t1], abs=1e-3)


async def test_a_running_jobs_timeout_is_re_armed(
        store, bus, payloads, clock, submits, cancels, saved, autojump_clock):
    t0 = trio.current_time()
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as first:
        run_id = await first.submit("timeout")
        await trio.sleep(400)
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as second:
        run = await second.wait_run(run_id)
    assert run.status == RunStatus.TIMED_OUT
    assert [c.job_id for c in cancels.payloads] == [f"{run_id}:t@1"]
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([1000], abs=1e-3)
    assert submits.job_ids == [f"{run_id}:t@1"] * 2  # published again on recovery


async def test_recovery_does_not_start_a_pending_run(store, bus, payloads, submits, saved):
    await create_pending_run(store, "created", workflow_id="running")
    async with open_engine(store, bus, payloads=payloads) as engine:
        await trio.testing.wait_all_tasks_blocked()
        assert engine.active_runs == 0
        assert (await store.get_run("created")).status == RunStatus.PENDING
        assert submits.payloads == []
        await engine.start_run("running", "created")  # until asked
        assert submits.job_ids == ["created:r@1"]


async def test_recover_false_resumes_nothing(store, bus, payloads, clock, submits, saved,
                                             autojump_clock):
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as first:
        run_id = await first.submit("delay")
    async with open_engine(store, bus, payloads=payloads, clock=clock, recover=False) as e:
        await trio.sleep(NAP * 2)
        assert e.active_runs == 0
        assert (await store.get_run(run_id)).status == RunStatus.RUNNING


async def test_a_fan_out_resumes_where_it_was(store, bus, payloads, clock, submits,
                                              autojump_clock):
    retry = RetryConfig(max_retries=1, initial_backoff_sec=60)
    await store.save_workflow(workflow(
        step("fan", for_each="input.items", max_parallel=2, retry=retry), timeout_sec=3600))
    t0 = trio.current_time()
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as first:
        run_id = await first.submit("wf", {"items": list(range(5))})
        await succeed(first, f"{run_id}:fan[0]@1")  # fan[2] dispatched
        await first.handle_job_result(fail(f"{run_id}:fan[1]@1"))  # backoff; fan[3] goes
    assert submits.job_ids == [f"{run_id}:fan[{i}]@1" for i in (0, 1, 2, 3)]
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as second:
        await trio.testing.wait_all_tasks_blocked()
        # fan[2], fan[3] running: published again (same ids), nothing new dispatched
        assert submits.job_ids[4:] == [f"{run_id}:fan[{i}]@1" for i in (2, 3)]
        await succeed(second, f"{run_id}:fan[2]@1")  # a slot frees: fan[1] is still in
        assert submits.job_ids[-1] == f"{run_id}:fan[4]@1"  # backoff, so fan[4] goes
        await trio.sleep(61)  # fan[1]'s backoff is over, but both slots are taken
        assert len(submits.job_ids) == 7
        await succeed(second, f"{run_id}:fan[3]@1")
        assert submits.job_ids[-1] == f"{run_id}:fan[1]@2"
        await succeed(second, f"{run_id}:fan[4]@1")
        await succeed(second, f"{run_id}:fan[1]@2")
        run = await second.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert len(submits.job_ids) == len(set(submits.job_ids)) + 2  # only the two again
    assert bus.jobs.duplicates == 2  # ...which the bus, still owning them, absorbed
    assert trio.current_time() - t0 < 3600


async def test_the_workflow_timeout_survives_a_restart(store, bus, payloads, clock, cancels,
                                                       autojump_clock):
    await store.save_workflow(workflow(step("a"), timeout_sec=1000))
    t0 = trio.current_time()
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as first:
        run_id = await first.submit("wf")
        await trio.sleep(400)
    await trio.sleep(100)
    async with open_engine(store, bus, payloads=payloads, clock=clock, resend_after=0) as second:
        run = await second.wait_run(run_id)
    assert run.status == RunStatus.TIMED_OUT
    assert [t - t0 for t, _ in cancels.items] == pytest.approx([1000], abs=1e-3)
