"""The run write of an engine step (``step_write``): job inputs committed with the run,
all or nothing; a missing run or a lost lease writes nothing at all; the engine hands its
job inputs to a store that commits them and publishes jobs whose payloads are there."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
from redis_kit import T0, a_run, raw, scripts_sent_twice

from cordtrio import open_engine
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.backends.redis import RedisBackends, RedisPayloadStore, connect
from cordtrio.backends.redis.step_argv import step_argv
from cordtrio.errors import LeaseLostError, NotFoundError
from cordtrio.model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    TimelineEvent,
    Workflow,
    WorkflowRun,
)
from cordtrio.payloads import key_from_pointer
from cordtrio.ports import PayloadCommit, RunChanges
from cordtrio.protocol import SUBJECT_SUBMIT, JobRequest

CTX = "ctx:run-1:s1@1"


def dispatch_next(run: WorkflowRun) -> RunChanges:
    """What the engine writes when s0 succeeds and s1 is dispatched: the header, both
    steps, s0's context entry, and s1's input payload."""
    run.steps["s0"].status = StepStatus.SUCCEEDED
    run.steps["s1"] = StepRun(step_id="s1", status=StepStatus.RUNNING, attempts=1)
    run.context["steps"] = {"s0": {"output": {"ok": True}}}
    run.updated_at = T0 + timedelta(seconds=1)
    return RunChanges(header=True, steps={"s0", "s1"}, context_steps={"s0"},
                      previous_status=RunStatus.RUNNING, payloads={CTX: b'{"x":1}'})


EVENT = TimelineEvent(type="step_dispatched", step_id="s1")


async def test_the_store_commits_only_its_own_payload_store(redis: RedisBackends) -> None:
    assert isinstance(redis.store, PayloadCommit)
    assert redis.store.commits_payloads_of(redis.payloads)
    assert not redis.store.commits_payloads_of(MemoryPayloadStore())
    other_ttl = RedisPayloadStore(redis.redis, ttl_seconds=60)
    assert not redis.store.commits_payloads_of(other_ttl)


async def test_a_step_write_stores_the_dispatched_jobs_input_with_its_ttl(
        redis: RedisBackends) -> None:
    assert redis.store.commits_payloads_of(redis.payloads)
    run = await a_run(redis)
    await redis.store.save_run_changes(run, dispatch_next(run), [EVENT])
    assert await redis.payloads.get_context(CTX) == b'{"x":1}'
    assert 0 < await raw(redis, "ttl", CTX) <= redis.payloads.ttl_seconds
    stored = await redis.store.get_run(run.id)
    assert stored.to_dict() == run.to_dict()
    assert list(stored.steps) == ["s0", "s1"]
    assert [e.type for e in await redis.store.list_timeline_events(run.id)] == [
        "step_dispatched"]


async def test_a_step_write_with_unchecked_payload_types_writes_as_a_plain_one(
        redis: RedisBackends) -> None:
    """A step write's arguments skip the adapter's type check (``step_argv``'s ``plain``) unless
    a payload is not ``bytes``: a ``bytearray`` one takes the checked path and is stored
    the same."""
    assert redis.store.commits_payloads_of(redis.payloads)
    for data in (b'{"x":1}', bytearray(b'{"x":1}')):
        run = await a_run(redis)
        changes = dispatch_next(run)
        changes.payloads = {CTX: data}  # type: ignore[dict-item]
        built = step_argv(run, changes, "", "", None, lambda count: 0, [], None, 60)
        assert built is not None and built[1] is (type(data) is bytes)
        await redis.store.save_run_changes(run, changes, [EVENT])
        assert await redis.payloads.get_context(CTX) == b'{"x":1}'
        assert (await redis.store.get_run(run.id)).to_dict() == run.to_dict()
        await redis.store.delete_run(run.id)
        await redis.payloads.delete(CTX)


async def test_a_step_write_sent_again_after_a_lost_reply_is_applied_once(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter sends a write again when the connection broke before its reply came: the
    server may have applied it already. The timeline append must not happen twice."""
    assert redis.store.commits_payloads_of(redis.payloads)
    run = await a_run(redis)
    scripts_sent_twice(redis, monkeypatch)
    await redis.store.save_run_changes(run, dispatch_next(run), [EVENT])
    run.steps["s1"].status = StepStatus.SUCCEEDED
    await redis.store.save_run_changes(
        run, RunChanges(header=True, steps={"s1"}),
        [TimelineEvent(type="step_succeeded", step_id="s1")])
    monkeypatch.undo()
    assert [e.type for e in await redis.store.list_timeline_events(run.id)] == [
        "step_dispatched", "step_succeeded"]
    stored = await redis.store.get_run(run.id)
    assert stored.to_dict() == run.to_dict()
    # and a later write (a new token) is applied as usual
    await redis.store.save_run_changes(run, RunChanges(header=True), [EVENT])
    assert len(await redis.store.list_timeline_events(run.id)) == 3


async def test_a_step_write_to_a_missing_run_writes_nothing(redis: RedisBackends) -> None:
    assert redis.store.commits_payloads_of(redis.payloads)
    run = await a_run(redis)
    await redis.store.delete_run(run.id)
    with pytest.raises(NotFoundError):
        await redis.store.save_run_changes(run, dispatch_next(run), [EVENT])
    assert not await raw(redis, "exists", CTX, "wf:run:run-1", "wf:run:timeline:run-1")
    assert await redis.store.list_run_ids_by_status("running") == []


async def test_a_fenced_step_write_without_the_lease_writes_nothing(
        redis: RedisBackends) -> None:
    assert redis.store.commits_payloads_of(redis.payloads)
    run = await a_run(redis)
    assert await redis.store.acquire_lease(run.id, "engine-b", 30.0)
    changes = dispatch_next(run)
    changes.lease_owner = "engine-a"
    with pytest.raises(LeaseLostError, match="engine-b"):
        await redis.store.save_run_changes(run, changes, [EVENT])
    assert not await raw(redis, "exists", CTX, "wf:run:timeline:run-1")
    assert (await redis.store.get_run(run.id)).steps["s0"].status == StepStatus.RUNNING
    changes.lease_owner = "engine-b"
    await redis.store.save_run_changes(run, changes, [EVENT])
    assert await redis.payloads.get_context(CTX) == b'{"x":1}'


async def test_a_write_that_removes_a_step_commits_its_payloads_too(
        redis: RedisBackends) -> None:
    assert redis.store.commits_payloads_of(redis.payloads)
    run = await a_run(redis)
    run.steps.pop("s0")  # removing a step reads the stored field names first
    changes = RunChanges(header=True, steps={"s0"}, previous_status=RunStatus.RUNNING,
                         payloads={CTX: b"{}"}, lease_owner="engine-a")
    assert await redis.store.acquire_lease(run.id, "engine-a", 30.0)
    await redis.store.save_run_changes(run, changes)
    assert await redis.payloads.get_context(CTX) == b"{}"
    assert "s0" not in (await redis.store.get_run(run.id)).steps


async def test_payloads_without_a_committed_payload_store_are_refused(
        redis: RedisBackends) -> None:
    run = await a_run(redis)
    with pytest.raises(ValueError, match="commits_payloads_of"):
        await redis.store.save_run_changes(run, dispatch_next(run))


async def test_the_engine_commits_job_inputs_with_the_step(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    puts: list[str] = []
    original = redis.payloads.put_context

    async def put_context(key: str, data: bytes) -> None:
        puts.append(key)
        await original(key, data)

    monkeypatch.setattr(redis.payloads, "put_context", put_context)
    wf = Workflow(id="wf-c", steps={
        "a": Step(id="a", topic="job.a", input={"n": "${input.n}"}),
        "b": Step(id="b", topic="job.b", depends_on=["a"], input={"m": 2})})
    await redis.store.save_workflow(wf)
    bus = MemoryBus()
    with trio.fail_after(30):
        async with (
            bus.subscribe(SUBJECT_SUBMIT, max_buffer=float("inf")) as requests,
            open_engine(redis.store, bus, payloads=redis.payloads) as engine,
        ):
            assert engine.payloads_in_changes
            await engine.submit(wf.id, {"n": 7})
            request = (await requests.receive()).payload
            assert isinstance(request, JobRequest)
            key = key_from_pointer(request.context_ptr, "ctx:")
            assert await redis.payloads.get_context(key) == b'{"n":7}'
    assert puts == []  # no put of its own: the step's script wrote it


async def test_the_engine_puts_job_inputs_of_another_payload_store_itself(
        fake_redis: RedisBackends) -> None:
    wf = Workflow(id="wf-c", steps={"a": Step(id="a", topic="job.a", input={"n": 1})})
    await fake_redis.store.save_workflow(wf)
    bus = MemoryBus()
    payloads = MemoryPayloadStore()
    with trio.fail_after(30):
        async with (
            bus.subscribe(SUBJECT_SUBMIT, max_buffer=float("inf")) as requests,
            open_engine(fake_redis.store, bus, payloads=payloads) as engine,
        ):
            assert not engine.payloads_in_changes
            await engine.submit(wf.id, {})
            request = (await requests.receive()).payload
            key = key_from_pointer(request.context_ptr, "ctx:")
            assert await payloads.get_context(key) == b'{"n":1}'


async def test_two_connections_do_not_commit_each_others_payloads(
        redis_url: str) -> None:
    if redis_url == "fakeredis":
        pytest.skip("needs a server two connections share")
    async with connect(redis_url) as one, connect(redis_url) as two:
        assert one.store.commits_payloads_of(one.payloads)
        assert not one.store.commits_payloads_of(two.payloads)


@pytest.mark.parametrize("first", [1999999999999999998, 50])
async def test_a_step_writes_ranks_follow_its_first_in_write_order(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch, first: int) -> None:
    """The script derives each ranked field's rank from the write's first (one argument,
    not one per field): consecutive, in write order, past a carry into the tenth-last
    digit of a 19-digit rank and for a short one; a field that has a rank keeps it."""
    from cordtrio.backends.redis import base

    clock = [first - 10]
    redis.store._last_rank = 0
    monkeypatch.setattr(base, "time_ns", lambda: clock[0])
    run = await a_run(redis)
    clock[0] = first
    held = await raw(redis, "hget", "wf:run:run-1", "ord:step:s0")
    run.steps["s0"].status = StepStatus.SUCCEEDED
    for sid in ("s1", "s2"):
        run.steps[sid] = StepRun(step_id=sid, status=StepStatus.RUNNING, attempts=1)
    run.context["steps"] = {"s0": {"output": {"ok": True}}}
    changes = RunChanges(steps={"s0", "s1", "s2"}, context_steps={"s0"})
    await redis.store.save_run_changes(run, changes)
    ranks = await raw(redis, "hmget", "wf:run:run-1", "ord:step:s0", "ord:step:s1",
                      "ord:step:s2", "ord:ctxstep:s0")
    assert ranks == [held, b"%d" % (first + 1), b"%d" % (first + 2), b"%d" % (first + 3)]
    assert redis.store._last_rank == first + 3
    stored = await redis.store.get_run(run.id)
    assert list(stored.steps) == ["s0", "s1", "s2"]


def test_step_keys_are_the_key_functions_keys() -> None:
    from cordtrio.backends.redis.keys import run_key, timeline_key
    from cordtrio.backends.redis.leases import lease_key
    from cordtrio.backends.redis.step_write import step_keys

    for run_id in ("r1", "run:é"):
        assert step_keys(run_id) == [run_key(run_id), lease_key(run_id), timeline_key(run_id)]
