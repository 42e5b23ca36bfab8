"""A run created by its first write on Redis (``RunChanges.created``): a submit is one
script — the run, its indexes, timeline, job input (with the payload TTL) and, in
multi-engine mode, its lease — and a run created finished gets its retention."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cordtrio import open_engine
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.model import RunStatus, Step, StepStatus, TimelineEvent, Workflow, WorkflowRun
from cordtrio.ports import RunChanges

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def _ttl(redis: RedisBackends, key: str) -> int:
    return int(await redis.redis.call("test", key, "ttl", key))


@pytest.mark.parametrize("multi_engine", [False, True])
async def test_a_submit_is_one_script(redis: RedisBackends, multi_engine: bool) -> None:
    store = redis.store
    await store.save_workflow(Workflow(id="wf", steps={"a": Step(id="a", topic="t")}))
    counter = CommandCounter(redis.redis)
    async with open_engine(store, MemoryBus(), payloads=redis.payloads, recover=False,
                           multi_engine=multi_engine) as engine:
        counter.reset()
        run_id = await engine.submit("wf", {"x": 1})
        counts = counter.counts.copy()
        assert counts["evalsha"] == 1, counts  # the create, the start, the lease in it
        assert counts["hset"] == 1 and counts["rpush"] == 1, counts
        run = await store.get_run(run_id)
        assert run.status == RunStatus.RUNNING
        assert run.steps["a"].status == StepStatus.RUNNING
        if multi_engine:
            assert await store.lease_owner(run_id) == engine.engine_id
        job_input = f"ctx:{run.steps['a'].job_id}"
        assert await redis.payloads.get_context(job_input) == b'{"x":1}'
        ttl = redis.payloads.ttl_seconds
        assert ttl is not None and 0 < await _ttl(redis, job_input) <= ttl
        # a keyed submit writes the run first, then starts it: two scripts
        counter.reset()
        await engine.submit("wf", {"x": 2}, idempotency_key="k")
        assert counter.counts["evalsha"] == 2, counter.counts
    counter.close()


async def test_a_run_created_finished_gets_its_retention(redis: RedisBackends) -> None:
    store = redis.store
    assert store.retention_seconds is not None
    run = WorkflowRun(id="done", workflow_id="wf", status=RunStatus.SUCCEEDED,
                      created_at=T0, updated_at=T0, completed_at=T0)
    await store.save_run_changes(run, RunChanges(header=True, created="t-1"),
                                 [TimelineEvent(type="run_status", status="succeeded")])
    for key in ("wf:run:done", "wf:run:timeline:done"):
        assert 0 < await _ttl(redis, key) <= store.retention_seconds, key
