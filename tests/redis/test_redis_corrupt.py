"""Corrupt data under a working engine: a run or workflow key holding garbage is
reported as ``RedisDataError`` naming the key, and neither crashes the engine nor touches the
other runs. On fakeredis and a real server (``redis`` fixture).

(The store-level cases — every listing skipping a corrupt entry, a corrupt child or context
field, timelines, payloads, schemas — are in ``test_redis_backend.py``.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from cordtrio import Job, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends, RedisDataError
from cordtrio.engine.supervisor import Engine
from cordtrio.errors import CordtrioError, StoreError
from cordtrio.model import RunStatus, Step, StepType, Workflow

DEADLINE = 30


def gated(wid: str) -> Workflow:
    """fetch → an approval (runs park there) → finish."""
    steps = [
        Step(id="fetch", topic="job.fetch"),
        Step(id="gate", type=StepType.APPROVAL, depends_on=["fetch"]),
        Step(id="finish", topic="job.finish", depends_on=["gate"],
             input={"n": "${steps.fetch.output.n}"}, output_path="result"),
    ]
    return Workflow(id=wid, org_id="org-x", steps={s.id: s for s in steps})


async def fetch(job: Job) -> dict[str, Any]:
    return {"n": job.input.get("n", 0)}


async def finish(job: Job) -> dict[str, Any]:
    return {"n": job.input["n"]}


@asynccontextmanager
async def engine_over(redis: RedisBackends, bus: MemoryBus) -> AsyncIterator[Engine]:
    async with (
        open_worker(bus, redis.payloads, {"job.fetch": fetch, "job.finish": finish}),
        open_engine(redis.store, bus, payloads=redis.payloads,
                    schemas=redis.schemas) as engine,
    ):
        yield engine


async def parked(redis: RedisBackends, engine: Engine, wid: str, n: int) -> str:
    """Submit a run of ``wid`` and wait until it waits at its gate."""
    run_id = await engine.submit(wid, {"n": n})
    while (await redis.store.get_run(run_id)).status != RunStatus.WAITING:
        await trio.sleep(0.005)
    return run_id


async def approve_and_wait(engine: Engine, run_id: str, n: int) -> None:
    await engine.approve_step(run_id, "gate")
    run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.context["result"] == {"n": n}


async def raw(redis: RedisBackends, method: str, *args: Any) -> Any:
    return await redis.redis.call("test", "", method, *args)


async def expect_data_error(call: Callable[[], Any], *names: str) -> str:
    """``call()`` raises ``RedisDataError`` (not a transient ``StoreError``) whose message
    names every one of ``names``, within a second (nothing retries it forever)."""
    with trio.fail_after(1), pytest.raises(RedisDataError) as info:
        await call()
    assert not isinstance(info.value, StoreError)
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    return str(info.value)


# Ways to spoil a run's hash: (what, commands), each naming the key in the error.
SPOIL_RUN = {
    "truncated header": lambda key: [("hset", (key, "header", b'{"id": "x", "status": "wai'))],
    "garbage step field": lambda key: [("hset", (key, "step:fetch", b"\x00\xff not json"))],
    "a list where the hash is": lambda key: [("delete", (key,)), ("rpush", (key, b"x", b"y"))],
}


@pytest.mark.parametrize("spoil", list(SPOIL_RUN))
async def test_a_corrupt_run_found_on_load_ends_failed_naming_the_key(
    redis: RedisBackends, spoil: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs A and B wait at their gate; the engine goes; A's key is spoiled; a new engine
    recovers both: A ends ``failed`` with an error naming its key (out of the waiting index
    and the org's active set, readable again), logged once without a traceback; B finishes,
    the engine serves new runs."""
    await redis.store.save_workflow(gated("wf"))
    bus = MemoryBus()
    with trio.fail_after(DEADLINE):
        async with engine_over(redis, bus) as engine:
            a = await parked(redis, engine, "wf", 1)
            b = await parked(redis, engine, "wf", 2)
        key = f"wf:run:{a}"
        for method, args in SPOIL_RUN[spoil](key):
            await raw(redis, method, *args)

        caplog.set_level(logging.WARNING)
        async with engine_over(redis, bus) as engine:
            await approve_and_wait(engine, b, 2)
            failed = await engine.wait_run(a)
            assert failed.status == RunStatus.FAILED
            assert key in failed.error["message"] and "marked failed" in failed.error["message"]
            try:  # a terminal run now: the approval changes nothing, whatever it says
                await engine.approve_step(a, "gate")
            except CordtrioError as exc:
                assert not isinstance(exc, RedisDataError)
            assert (await engine.wait_run(a)).status == RunStatus.FAILED
            assert a not in engine._runs  # no task left holding it
            c = await parked(redis, engine, "wf", 3)  # the engine still serves
            await approve_and_wait(engine, c, 3)
    assert (await redis.store.get_run(a)).status == RunStatus.FAILED  # readable again
    assert a not in await redis.store.list_run_ids_by_status("waiting")
    assert a in await redis.store.list_run_ids_by_status("failed")
    assert await redis.store.count_active_runs("org-x") == 0
    about_a = [r for r in caplog.records if a in r.getMessage()]
    assert len(about_a) == 1 and about_a[0].levelno == logging.ERROR, about_a
    assert key in about_a[0].getMessage() and not about_a[0].exc_info


async def test_a_run_spoiled_while_active_ends_failed_alone(
    redis: RedisBackends, caplog: pytest.LogCaptureFixture
) -> None:
    """A's key becomes a list while its task holds it in memory: the next write fails with
    ``RedisDataError`` naming the key (not retried as transient), A is marked failed naming
    the key (its list kept aside) and logged in one line; B, in the same engine at the same
    time, finishes; the engine keeps serving."""
    await redis.store.save_workflow(gated("wf"))
    bus = MemoryBus()
    caplog.set_level(logging.WARNING)
    with trio.fail_after(DEADLINE):
        async with engine_over(redis, bus) as engine:
            a = await parked(redis, engine, "wf", 1)
            b = await parked(redis, engine, "wf", 2)
            key = f"wf:run:{a}"
            await raw(redis, "delete", key)
            await raw(redis, "rpush", key, b"not", b"a", b"hash")
            async with trio.open_nursery() as nursery:  # both at once
                nursery.start_soon(approve_and_wait, engine, b, 2)
                await expect_data_error(lambda: engine.approve_step(a, "gate"), key)
            failed = await engine.wait_run(a)
            assert failed.status == RunStatus.FAILED and key in failed.error["message"]
            c = await parked(redis, engine, "wf", 3)
            await approve_and_wait(engine, c, 3)
    assert await raw(redis, "lrange", f"wf:corrupt:run:{a}", 0, -1) == [b"not", b"a", b"hash"]
    assert a not in await redis.store.list_run_ids_by_status("waiting")
    about_a = [r for r in caplog.records if a in r.getMessage()]
    assert len(about_a) == 1 and not about_a[0].exc_info, about_a
    assert not any("retrying" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("garbage", [b'{"id": "w1", "steps": {', b"[1, 2, 3]",
                                     b'{"id": "w1", "steps": 5}'])
async def test_a_corrupt_workflow_fails_its_runs_alone(
    redis: RedisBackends, garbage: bytes
) -> None:
    """wf:def:w1 holds garbage: w1's runs and submits are reported naming the key; w2's run,
    waiting in the same engine, finishes."""
    await redis.store.save_workflow(gated("w1"))
    await redis.store.save_workflow(gated("w2"))
    bus = MemoryBus()
    with trio.fail_after(DEADLINE):
        async with engine_over(redis, bus) as engine:
            r1 = await parked(redis, engine, "w1", 1)
            r2 = await parked(redis, engine, "w2", 2)
        await raw(redis, "set", "wf:def:w1", garbage)
        async with engine_over(redis, bus) as engine:
            await expect_data_error(lambda: engine.approve_step(r1, "gate"), "wf:def:w1")
            await expect_data_error(lambda: engine.submit("w1", {"n": 5}), "wf:def:w1")
            await approve_and_wait(engine, r2, 2)
            assert (await redis.store.get_run(r1)).status == RunStatus.WAITING  # untouched
    assert [w.id for w in await redis.store.list_workflows()] == ["w2"]


async def test_a_workflow_key_of_the_wrong_type_is_named(redis: RedisBackends) -> None:
    await raw(redis, "rpush", "wf:def:w9", b"x")
    bus = MemoryBus()
    async with engine_over(redis, bus) as engine:
        message = await expect_data_error(lambda: engine.submit("w9", {}), "wf:def:w9")
    assert "wrong kind of value" in message


def test_data_errors_are_cordtrio_errors_but_never_transient() -> None:
    from cordtrio.retry import is_transient

    error = RedisDataError("redis key 'wf:run:x': bad")
    assert isinstance(error, CordtrioError) and not is_transient(error)
    assert is_transient(StoreError("redis redis://h:1/0: get: ConnectionError"))
