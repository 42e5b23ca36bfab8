"""Result pointers outside the payload namespace (``cordtrio.payloads``): a job result whose
``result_ptr`` names any other key fails its step with an error naming the pointer, and
nothing is read from that key into the run."""

from __future__ import annotations

import json

import pytest
from test_engine_kit import WF, ok, step, timeline_types, workflow

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.engine import open_engine
from cordtrio.model import RunStatus, StepStatus

FOREIGN = ["redis://other:key", "redis://secret:token", "other:key", "redis://wf:run:x",
           "redis://ctx:job-of-someone"]


class ReadSpy(MemoryPayloadStore):
    """Counts every key the engine asks for."""

    def __init__(self) -> None:
        super().__init__(ttl_seconds=None)
        self.asked: list[str] = []

    async def get_result(self, key: str) -> bytes:
        self.asked.append(key)
        return await super().get_result(key)


@pytest.mark.parametrize("pointer", FOREIGN)
@pytest.mark.parametrize("output_path", ["", "out"])
async def test_a_result_pointer_outside_the_namespace_fails_the_step(
        store, bus, save, autojump_clock, pointer: str, output_path: str) -> None:
    await save(step("a", output_path=output_path), step("b", depends_on=["a"]))
    payloads = ReadSpy()
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        await engine.handle_job_result(ok(f"{run_id}:a@1", pointer))
        run = await store.get_run(run_id)
    assert run.status == RunStatus.FAILED
    a = run.steps["a"]
    assert a.status == StepStatus.FAILED and pointer in a.error["message"]
    assert "refused" in a.error["message"] and a.output is None
    assert "steps" not in run.context or "a" not in run.context["steps"]
    assert "out" not in run.context and "b" not in run.steps
    assert not [k for k in payloads.asked if not k.startswith("res:")]  # nothing foreign read
    assert "step_output_invalid" in await timeline_types(store, run_id, "a")


async def test_a_result_pointer_inside_the_namespace_still_works(
        store, bus, save, payloads, autojump_clock) -> None:
    await save(step("a", output_path="out"))
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        await payloads.put_result(f"res:{run_id}:a@1", b'{"n": 1}')
        await engine.handle_job_result(ok(f"{run_id}:a@1", f"res:{run_id}:a@1"))
        run = await store.get_run(run_id)
    assert run.status == RunStatus.SUCCEEDED and run.context["out"] == {"n": 1}


async def test_a_redis_key_named_by_a_result_never_enters_the_run() -> None:
    """On Redis, ``other:key`` holds a secret: the run fails naming the pointer and the secret
    is nowhere in the stored run or its timeline."""
    import fakeredis

    from cordtrio.backends.redis import connect

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    async with connect("fakeredis", client=client) as redis:
        await redis.redis.call("test", "", "set", "other:key", b'{"password": "hunter2"}')
        await redis.store.save_workflow(workflow(step("a", output_path="out")))
        async with open_engine(redis.store, MemoryBus(), payloads=redis.payloads) as engine:
            run_id = await engine.submit(WF)
            await engine.handle_job_result(ok(f"{run_id}:a@1", "redis://other:key"))
            run = await engine.wait_run(run_id)
        assert run.status == RunStatus.FAILED
        assert "redis://other:key" in run.steps["a"].error["message"]
        stored = json.dumps(run.to_dict()) + json.dumps(
            [e.to_dict() for e in await redis.store.list_timeline_events(run_id)])
        assert "hunter2" not in stored


