"""Embedding an engine in an application: ``serve_engine`` under ``nursery.start``,
``Engine.run``/``run_workflow`` (submit, wait, raise on failure), and where a run's outputs
are (``WorkflowRun.output_of``/``outputs_of``)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import cordtrio
from cordtrio import Job, RunFailedError, RunStatus, Step, StepType, Workflow
from cordtrio.errors import NotFoundError


async def double(job: Job) -> dict[str, Any]:
    return {"n": job.item * 2}


async def listing(job: Job) -> list[int]:
    return [3, 1, 2]


async def boom(job: Job) -> None:
    raise RuntimeError("disk full")


HANDLERS = {"job.list": listing, "job.double": double, "job.boom": boom}


def fan_out() -> Workflow:
    return Workflow(id="fan", steps={
        "list": Step(topic="job.list"),
        "each": Step(topic="job.double", depends_on=["list"], for_each="steps.list.output"),
    })


def failing() -> Workflow:
    return Workflow(id="bad", steps={"a": Step(topic="job.boom")})


async def test_serve_engine_and_serve_worker_start_in_a_nursery(
        store, bus, payloads, autojump_clock) -> None:
    await store.save_workflow(fan_out())
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(cordtrio.serve_engine, store, bus)
        worker = await nursery.start(cordtrio.serve_worker, bus, payloads, HANDLERS)
        assert isinstance(engine, cordtrio.Engine) and isinstance(worker, cordtrio.Worker)
        run = await engine.run("fan")
        assert run.status == RunStatus.SUCCEEDED
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError):  # the engine closed with its task
        await engine.submit("fan")


async def test_run_returns_the_succeeded_run_with_its_outputs(
        store, bus, payloads, engine, autojump_clock) -> None:
    await store.save_workflow(fan_out())
    async with cordtrio.open_worker(bus, payloads, HANDLERS):
        run = await engine.run("fan", {"x": 1})
    assert run.input == {"x": 1}
    assert run.output_of("list") == [3, 1, 2]
    assert run.outputs_of("each") == [{"n": 6}, {"n": 2}, {"n": 4}]
    assert run.output_of("each[1]") == {"n": 2}
    assert run.output_of("each") == run.outputs_of("each")
    assert run.outputs_of("list") == []
    with pytest.raises(NotFoundError, match="'nope'"):
        run.outputs_of("nope")


async def test_run_raises_run_failed_error_naming_run_status_and_step(
        store, bus, payloads, engine, autojump_clock) -> None:
    await store.save_workflow(failing())
    async with cordtrio.open_worker(bus, payloads, HANDLERS):
        with pytest.raises(RunFailedError) as info:
            await cordtrio.run_workflow(engine, "bad")
    error = info.value
    assert error.status == RunStatus.FAILED and error.step_id == "a"
    assert error.error_message == "disk full" and error.run.id == error.run_id
    assert f"run {error.run_id!r}" in str(error) and "failed" in str(error)
    assert "step 'a'" in str(error) and "disk full" in str(error)
    assert isinstance(error, cordtrio.CordtrioError)


async def test_run_of_a_workflow_with_a_run_timeout_raises_timed_out(
        store, bus, payloads, engine, autojump_clock) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(60)

    await store.save_workflow(Workflow(id="slow", timeout_sec=5,
                                       steps={"a": Step(topic="job.slow")}))
    async with cordtrio.open_worker(bus, payloads, {"job.slow": slow}):
        with pytest.raises(RunFailedError) as info:
            await engine.run("slow")
    assert info.value.status == RunStatus.TIMED_OUT


def test_step_type_strings_work_in_python_built_workflows() -> None:
    wf = Workflow(id="w", steps={"gate": Step(type="approval")})  # type: ignore[arg-type]
    assert wf.steps["gate"].type is StepType.APPROVAL and wf.steps["gate"].id == "gate"
