"""The engine end to end over the Redis backends (fakeredis and a real server): workers,
fan-out, retries, output schemas from the Redis registry, and recovery by a new engine.

The real-server runs use Trio's real clock (see conftest): retries use a zero backoff
(``initial_backoff_sec`` < 1 truncates to 0 s) and recovery waits on an approval, so nothing
sleeps. A fakeredis-only test shows a 300 s backoff re-armed by a new engine under the
autojump clock, which fakeredis (no real I/O) supports.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import trio
import trio.testing

from cordtrio import Job, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends, connect
from cordtrio.engine import ended_runs
from cordtrio.errors import NotFoundError
from cordtrio.model import RetryConfig, RunStatus, Step, StepStatus, StepType, Workflow
from cordtrio.protocol import JobResult, JobStatus

ITEMS = ["a", "b", "c", "d", "e"]
DEADLINE = 30  # seconds: a run that does not finish fails the test instead of hanging it
NO_BACKOFF = RetryConfig(max_retries=2, initial_backoff_sec=0.5, max_backoff_sec=0.5)


class Handlers:
    """fetch → items; item → upper-cased (fails once for ``c``); final → a count."""

    def __init__(self) -> None:
        self.failed_once: set[Any] = set()
        self.calls: list[str] = []
        self.flaked = trio.Event()

    async def fetch(self, job: Job) -> dict[str, Any]:
        self.calls.append("fetch")
        return {"items": job.input["items"]}

    async def item(self, job: Job) -> dict[str, Any]:
        self.calls.append(f"item:{job.item}")
        if job.item == "c" and "c" not in self.failed_once:
            self.failed_once.add("c")
            self.flaked.set()
            raise RuntimeError("flaky upstream")
        return {"value": str(job.item).upper()}

    async def final(self, job: Job) -> dict[str, Any]:
        self.calls.append("final")
        return {"count": job.input["count"]}

    def mapping(self) -> dict[str, Any]:
        return {"job.fetch": self.fetch, "job.item": self.item, "job.final": self.final}


def fanout_workflow(*, gate: bool = False, retry: RetryConfig = NO_BACKOFF) -> Workflow:
    steps = [
        Step(id="fetch", topic="job.fetch", input={"items": "${input.items}"}),
        Step(id="process", topic="job.item", depends_on=["fetch"],
             for_each="steps.fetch.output.items", max_parallel=2, retry=retry),
        Step(id="final", topic="job.final", depends_on=["process"],
             input={"count": "${length(steps.fetch.output.items)}"},
             output_schema_id="count", output_path="result"),
    ]
    if gate:
        steps.insert(1, Step(id="gate", type=StepType.APPROVAL, depends_on=["fetch"]))
        steps[2].depends_on = ["gate"]
    return Workflow(id="wf", org_id="org-1", steps={s.id: s for s in steps})


async def setup(redis: RedisBackends, wf: Workflow) -> None:
    await redis.schemas.register("count", {
        "type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]})
    await redis.store.save_workflow(wf)


def check_succeeded(run: Any) -> None:
    assert run.status == RunStatus.SUCCEEDED, run.error
    children = run.steps["process"].children
    assert [children[f"process[{i}]"].status for i in range(len(ITEMS))] == [
        StepStatus.SUCCEEDED] * len(ITEMS)
    assert children["process[2]"].attempts == 2  # the flaky one, retried
    steps = run.context["steps"]
    assert [steps[f"process[{i}]"]["output"]["value"] for i in range(len(ITEMS))] == [
        s.upper() for s in ITEMS]
    assert run.context["result"] == {"count": len(ITEMS)}


async def test_fan_out_with_a_retry_runs_to_success(redis: RedisBackends) -> None:
    await setup(redis, fanout_workflow())
    bus = MemoryBus()
    handlers = Handlers()
    with trio.fail_after(DEADLINE):
        async with (
            open_worker(bus, redis.payloads, handlers.mapping()),
            open_engine(redis.store, bus, payloads=redis.payloads,
                        schemas=redis.schemas) as engine,
        ):
            run_id = await engine.submit("wf", {"items": ITEMS}, idempotency_key="once")
            run = await engine.wait_run(run_id)
            assert await engine.submit("wf", {"items": ITEMS}, idempotency_key="once") == run_id
    check_succeeded(run)
    stored = await redis.store.get_run(run_id)
    assert stored.to_dict() == run.to_dict()
    assert await redis.store.count_active_runs("org-1") == 0
    assert await redis.store.list_run_ids_by_status("succeeded") == [run_id]
    types = [e.type for e in await redis.store.list_timeline_events(run_id, limit=1000)]
    assert "step_retry_scheduled" in types and types[-1] == "run_status"
    assert sorted(handlers.calls).count("item:c") == 2


async def test_a_new_engine_finishes_a_run_left_mid_way(redis: RedisBackends) -> None:
    await setup(redis, fanout_workflow(gate=True))
    bus = MemoryBus()
    handlers = Handlers()
    fetched = trio.Event()

    def finished(run_id: str, step_id: str, status: Any) -> None:
        if step_id == "fetch":
            fetched.set()

    def engine(**hooks: Any) -> Any:
        return open_engine(redis.store, bus, payloads=redis.payloads, schemas=redis.schemas,
                           **hooks)

    with trio.fail_after(DEADLINE):
        async with open_worker(bus, redis.payloads, handlers.mapping()):
            async with engine(on_step_finished=finished) as first:
                run_id = await first.submit("wf", {"items": ITEMS})
                await fetched.wait()  # persisted before the hook runs
            left = await redis.store.get_run(run_id)  # the first engine is gone
            assert left.status == RunStatus.WAITING
            assert left.steps["gate"].status == StepStatus.WAITING
            assert "process" not in left.steps or not left.steps["process"].children

            async with engine() as second:
                assert second.active_runs == 1  # recovered from the store
                await second.approve_step(run_id, "gate")
                run = await second.wait_run(run_id)
    check_succeeded(run)
    assert (await redis.store.get_run(run_id)).to_dict() == run.to_dict()
    assert handlers.calls.count("fetch") == 1  # nothing done twice


async def test_a_backoff_is_re_armed_by_a_new_engine_on_the_autojump_clock(
    fake_redis: RedisBackends, autojump_clock: trio.testing.MockClock
) -> None:
    """fakeredis only: hours of virtual time, no real waiting."""
    redis = fake_redis
    await setup(redis, fanout_workflow(retry=RetryConfig(max_retries=2,
                                                         initial_backoff_sec=300)))
    bus = MemoryBus()
    handlers = Handlers()
    t0 = trio.current_time()
    async with open_worker(bus, redis.payloads, handlers.mapping()):
        async with open_engine(redis.store, bus, payloads=redis.payloads,
                               schemas=redis.schemas) as first:
            run_id = await first.submit("wf", {"items": ITEMS})
            await handlers.flaked.wait()
            await trio.sleep(10)  # virtual: the engine records the failure, arms the backoff
        child = (await redis.store.get_run(run_id)).steps["process"].children["process[2]"]
        assert child.status == StepStatus.PENDING and child.next_attempt_at is not None
        async with open_engine(redis.store, bus, payloads=redis.payloads,
                               schemas=redis.schemas) as second:
            run = await second.wait_run(run_id)
    check_succeeded(run)
    assert 300 <= trio.current_time() - t0 < 400  # the backoff, from the stored next_attempt_at


async def _finished_with_nobody_waiting(engine: Any, wf_id: str) -> str:
    """A run of ``wf_id`` submitted, run to its end and let go of, with nobody waiting
    for it: the engine keeps its final run for the next ``wait_run``."""
    run_id = await engine.submit(wf_id)
    while engine.is_active(run_id) or run_id not in engine._ended:
        await trio.sleep(0.001)  # (the worker's job and the writes: real I/O)
    return run_id


async def _noop(job: Job) -> dict[str, Any]:
    return {}


ONE_STEP = Workflow(id="one", steps={"a": Step(id="a", topic="job.noop")})


def ok(job_id: str) -> JobResult:
    return JobResult(job_id=job_id, status=JobStatus.SUCCEEDED)


async def test_a_deletion_through_another_connection_is_seen_once_the_kept_run_is_old(
        redis_server: Any, monkeypatch: Any) -> None:
    """A real server, the run deleted through a second connection (as another process
    would): the ``wait_run`` that takes the run this engine just finished answers from
    what it kept; once a kept run is older than ``ENDED_TRUSTED`` (0 here), the store is
    asked, and the run is not found."""
    bus = MemoryBus()
    async with connect(redis_server.url) as redis, connect(redis_server.url) as other:
        await redis.redis.call("flushall", "", "flushall")
        await redis.store.save_workflow(ONE_STEP)
        with trio.fail_after(DEADLINE):
            async with open_worker(bus, redis.payloads, {"job.noop": _noop}):
                async with open_engine(redis.store, bus, payloads=redis.payloads) as engine:
                    run_id = await _finished_with_nobody_waiting(engine, "one")
                    await other.store.delete_run(run_id)
                    assert (await engine.wait_run(run_id)).status == RunStatus.SUCCEEDED
                monkeypatch.setattr(ended_runs, "ENDED_TRUSTED", 0.0)
                async with open_engine(redis.store, bus, payloads=redis.payloads) as engine:
                    run_id = await _finished_with_nobody_waiting(engine, "one")
                    await other.store.delete_run(run_id)
                    with pytest.raises(NotFoundError):
                        await engine.wait_run(run_id)


async def test_a_kept_run_is_trusted_no_longer_than_the_store_keeps_finished_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """A store that keeps finished runs for less than ``ENDED_TRUSTED`` (1 s here) bounds
    how long a kept run is answered without asking: a second after its end, a deletion
    elsewhere is seen (fakeredis, two clients of one server, on the autojump clock)."""
    server = fakeredis.FakeServer()
    bus = MemoryBus()
    async with (
        connect("fakeredis", client=fakeredis.FakeAsyncRedis(server=server),
                retention_seconds=1) as redis,
        connect("fakeredis", client=fakeredis.FakeAsyncRedis(server=server)) as other,
    ):
        await redis.store.save_workflow(ONE_STEP)
        async with (
            open_worker(bus, redis.payloads, {"job.noop": _noop}),
            open_engine(redis.store, bus, payloads=redis.payloads) as engine,
        ):
            run_id = await _finished_with_nobody_waiting(engine, "one")
            await other.store.delete_run(run_id)
            await trio.sleep(1.0)
            with pytest.raises(NotFoundError):
                await engine.wait_run(run_id)


async def test_a_deletion_through_the_engine_s_store_as_the_run_ends_is_seen(
        redis: RedisBackends) -> None:
    """A deletion through the engine's own store object, made while the result that ends
    the run is applied (its transaction lands after the run's last write), is seen by the
    ``wait_run`` that comes after: the run is not found. Each round starts the deletion a
    few schedule points later."""
    await redis.store.save_workflow(ONE_STEP)
    with trio.fail_after(DEADLINE):
        async with open_engine(redis.store, MemoryBus(), payloads=redis.payloads) as engine:
            for delay in range(6):
                run_id = await engine.submit("one")

                async def delete(run_id: str = run_id, delay: int = delay) -> None:
                    for _ in range(delay):
                        await trio.lowlevel.checkpoint()
                    await redis.store.delete_run(run_id)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(engine.handle_job_result, ok(f"{run_id}:a@1"))
                    nursery.start_soon(delete)
                while engine.is_active(run_id):
                    await trio.sleep(0.001)
                with pytest.raises(NotFoundError):
                    await redis.store.get_run(run_id)
                with pytest.raises(NotFoundError):
                    await engine.wait_run(run_id)


async def test_a_deletion_under_way_through_the_engine_s_store_is_seen(
        redis: RedisBackends) -> None:
    """A deletion through the engine's own store object that started before the run's last
    write, landed after it and has not returned yet when ``wait_run`` comes (its reply on
    the way): the run is not found."""
    await redis.store.save_workflow(ONE_STEP)
    adapter = redis.store._redis
    transaction = adapter.transaction
    go, landed, reply = trio.Event(), trio.Event(), trio.Event()

    async def delayed(what: str, key: str, watch: Any, fn: Any) -> Any:
        if what != "delete run":
            return await transaction(what, key, watch, fn)
        await go.wait()  # the request on its way
        result = await transaction(what, key, watch, fn)
        landed.set()
        await reply.wait()  # the reply on its way back
        return result

    adapter.transaction = delayed
    with trio.fail_after(DEADLINE):
        async with open_engine(redis.store, MemoryBus(), payloads=redis.payloads) as engine:
            run_id = await engine.submit("one")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(redis.store.delete_run, run_id)
                await trio.testing.wait_all_tasks_blocked()
                await engine.handle_job_result(ok(f"{run_id}:a@1"))
                while engine.is_active(run_id):
                    await trio.sleep(0.001)
                go.set()
                await landed.wait()
                with pytest.raises(NotFoundError):
                    await engine.wait_run(run_id)
                reply.set()
