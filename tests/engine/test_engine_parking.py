"""Runs parked on an approval (no timer, nothing in flight) hold no run task: their state
lives only in the store, so 10,000 of them cost store memory alone (W4). The next command
or result reactivates the run transparently."""

from __future__ import annotations

import trio
import trio.testing
from test_engine_kit import WF, started, step, succeed

from cordtrio.model import RunStatus, StepStatus, StepType


async def test_a_parked_run_has_no_task_and_resumes_on_approval(engine, store, save, submits):
    await save(step("gate", type=StepType.APPROVAL), step("after", depends_on=["gate"]))
    run_id = await engine.submit(WF)
    await trio.testing.wait_all_tasks_blocked()
    assert (await store.get_run(run_id)).status == RunStatus.WAITING
    assert engine.active_runs == 0  # parked: nothing but the store holds it

    async with trio.open_nursery() as nursery:
        done: list[RunStatus] = []

        async def waiter() -> None:
            done.append((await engine.wait_run(run_id)).status)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await engine.approve_step(run_id, "gate")  # a new task loads the run
        assert engine.active_runs == 1
        assert submits.job_ids == [f"{run_id}:after@1"]
        await succeed(engine, f"{run_id}:after@1")
    assert done == [RunStatus.SUCCEEDED]
    assert engine.active_runs == 0


async def test_a_waiting_run_with_a_timer_or_a_job_keeps_its_task(engine, store, save,
                                                                 autojump_clock):
    await save(step("gate", type=StepType.APPROVAL),
               step("slow", timeout_sec=60))  # runs beside the gate, with a timeout
    run_id = await engine.submit(WF)
    await started(engine.bus, f"{run_id}:slow@1")  # the timeout counts from here
    run = await store.get_run(run_id)
    assert run.status == RunStatus.WAITING
    assert run.steps["slow"].status == StepStatus.RUNNING
    assert engine.active_runs == 1  # its timeout timer lives in the task
    await trio.sleep(61)  # ...and fires
    run = await store.get_run(run_id)
    assert run.steps["slow"].status == StepStatus.TIMED_OUT


async def test_a_rejected_parked_run_fails(engine, store, save):
    await save(step("gate", type=StepType.APPROVAL), step("after", depends_on=["gate"]))
    run_id = await engine.submit(WF)
    await trio.testing.wait_all_tasks_blocked()
    assert engine.active_runs == 0
    await engine.approve_step(run_id, "gate", approved=False)
    run = await engine.wait_run(run_id)
    assert run.status == RunStatus.FAILED
    assert run.steps["gate"].status == StepStatus.FAILED
