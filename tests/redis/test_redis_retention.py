"""Retention of finished runs on Redis: a run that finishes gets ``EXPIRE`` on its hash, its
timeline and its idempotency key (in the write that finishes it); expired ids leave the
indexes as listings meet them; ``retention_seconds=0`` keeps everything. On a real server
(keys really expire) and fakeredis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import trio

from cordtrio import open_engine
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import connect
from cordtrio.model import RunStatus, Step, StepType, Workflow


class Clock:
    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def now(self) -> datetime:
        return self.current


def _workflow() -> Workflow:
    steps = [Step(id="gate", type=StepType.APPROVAL)]
    return Workflow(id="wf", org_id="org", steps={s.id: s for s in steps})


def _connect(redis_url: str, **kw: Any) -> Any:
    if redis_url == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return connect("fakeredis", client=client, **kw)
    return connect(redis_url, **kw)


async def _ttl(redis: Any, key: str) -> int:
    return int(await redis.redis.call("test", key, "ttl", key))


async def test_a_finished_run_expires_after_the_retention(redis_url: str) -> None:
    clock = Clock()
    async with _connect(redis_url, retention_seconds=1, clock=clock) as redis:
        if redis_url != "fakeredis":
            await redis.redis.call("flushall", "", "flushall")
        store = redis.store
        await store.save_workflow(_workflow())
        async with open_engine(store, MemoryBus()) as engine:
            done = await engine.submit("wf", idempotency_key="k-done")
            open_run = await engine.submit("wf", idempotency_key="k-open")
            await engine.approve_step(done, "gate")
            assert (await engine.wait_run(done)).status == RunStatus.SUCCEEDED
        keys = [f"wf:run:{done}", f"wf:run:timeline:{done}", "wf:run:idempotency:k-done"]
        for key in keys:
            assert 0 < await _ttl(redis, key) <= 1, key
        for key in (f"wf:run:{open_run}", f"wf:run:timeline:{open_run}",
                    "wf:run:idempotency:k-open"):
            assert await _ttl(redis, key) == -1, key  # unfinished: kept

        await trio.sleep(1.2)  # the real server expires them
        for key in keys:
            assert await _ttl(redis, key) == -2, key  # gone
        assert [r.id for r in await store.list_runs()] == [open_run]
        assert await redis.redis.call("test", "", "zscore", "wf:runs:all", done) is None
        assert [r.id for r in await store.list_runs_by_workflow("wf")] == [open_run]
        assert await redis.redis.call("test", "", "zscore", "wf:runs:wf", done) is None
        clock.current += timedelta(seconds=2)  # past the retention: the index sheds it
        assert await store.list_run_ids_by_status("succeeded") == []
        assert await store.get_run_by_idempotency_key("k-done") is None
        assert await store.list_run_ids_by_status("waiting") == [open_run]


@pytest.mark.parametrize("retention", [0, None])
async def test_retention_zero_keeps_finished_runs(redis_url: str, retention: Any) -> None:
    async with _connect(redis_url, retention_seconds=retention) as redis:
        if redis_url != "fakeredis":
            await redis.redis.call("flushall", "", "flushall")
        await redis.store.save_workflow(_workflow())
        async with open_engine(redis.store, MemoryBus()) as engine:
            run_id = await engine.submit("wf")
            await engine.approve_step(run_id, "gate")
            await engine.wait_run(run_id)
        assert await _ttl(redis, f"wf:run:{run_id}") == -1
        assert await redis.store.list_run_ids_by_status("succeeded") == [run_id]


async def test_the_default_retention_is_a_week(redis_url: str) -> None:
    async with _connect(redis_url) as redis:
        if redis_url != "fakeredis":
            await redis.redis.call("flushall", "", "flushall")
        await redis.store.save_workflow(_workflow())
        async with open_engine(redis.store, MemoryBus()) as engine:
            run_id = await engine.submit("wf")
            await engine.cancel_run(run_id)
        assert 7 * 86400 - 60 < await _ttl(redis, f"wf:run:{run_id}") <= 7 * 86400
