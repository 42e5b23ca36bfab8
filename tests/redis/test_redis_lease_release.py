"""A finished run's last write releases its lease in the run write's own script
(``RunChanges.release_lease``; ``step_write``): the commands it runs for that are counted as
the script's others are, and a write sent again after its reply was lost — it released the
lease the first time — is reported written, not refused."""

from __future__ import annotations

from collections import Counter

import pytest
from redis_kit import a_run, raw, scripts_sent_twice

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.leases import COMMANDS_QUEUE, lease_key
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.model import RunStatus, StepStatus, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges

EVENT = TimelineEvent(type="run_status", status="succeeded")


def last_write(run: WorkflowRun) -> RunChanges:
    """The write that ends ``run``: its step and itself succeeded, released with it."""
    run.steps["s0"].status = StepStatus.SUCCEEDED
    run.status = RunStatus.SUCCEEDED
    return RunChanges(header=True, steps={"s0"}, previous_status=RunStatus.RUNNING,
                      lease_owner="engine-a", release_lease=True)


async def server_counts(redis: RedisBackends) -> Counter[str]:
    info = await raw(redis, "info", "commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"])
                    for name, v in info.items()})


async def test_the_last_write_releases_the_lease_in_its_script(
        redis: RedisBackends, redis_kind: str) -> None:
    run = await a_run(redis)
    assert await redis.store.acquire_lease(run.id, "engine-a", 30.0)
    await redis.store.push_command(run.id, b"late")  # left for the run: handed on
    await raw(redis, "delete", COMMANDS_QUEUE)  # (the owner was woken instead)
    if redis_kind == "redis":
        await raw(redis, "config_resetstat")
    counter = CommandCounter(redis.redis)
    await redis.store.save_run_changes(run, last_write(run), [EVENT])
    counts = Counter(counter.counts)
    counter.close()
    ran = await server_counts(redis) if redis_kind == "redis" else None
    assert await redis.store.lease_owner(run.id) is None
    assert await raw(redis, "lrange", COMMANDS_QUEUE, 0, -1) == [run.id.encode()]
    assert (await redis.store.get_run(run.id)).status == RunStatus.SUCCEEDED
    # one script: its usual commands, then the lease's DEL and the EXISTS of the inbox
    # and processing list (the RPUSH to the commands queue, conditional, is not counted)
    assert counts["evalsha"] == 1 and counts["get"] == 1
    assert counts["del"] == 1 and counts["exists"] == 1
    if ran is not None:  # what the server ran, the RPUSH of the queue included
        for name in ("get", "hget", "hset", "del", "exists", "evalsha"):
            assert ran[name] == counts[name], name
        assert ran["rpush"] == counts["rpush"] + 1


async def test_a_write_that_is_not_the_last_leaves_the_lease(redis: RedisBackends) -> None:
    run = await a_run(redis)
    assert await redis.store.acquire_lease(run.id, "engine-a", 30.0)
    counter = CommandCounter(redis.redis)
    run.steps["s0"].attempts = 2
    await redis.store.save_run_changes(
        run, RunChanges(steps={"s0"}, lease_owner="engine-a"), [EVENT])
    counts = Counter(counter.counts)
    counter.close()
    assert await redis.store.lease_owner(run.id) == "engine-a"
    assert counts["del"] == 0 and counts["exists"] == 0


async def test_the_last_write_sent_again_after_a_lost_reply_is_written_once(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter sends a write again when the connection broke before its reply came:
    the first one was applied and released the lease, so the lease check refuses the second
    — but its token shows it is the same write, applied: it is reported written."""
    run = await a_run(redis)
    assert await redis.store.acquire_lease(run.id, "engine-a", 30.0)
    scripts_sent_twice(redis, monkeypatch)
    await redis.store.save_run_changes(run, last_write(run), [EVENT])
    monkeypatch.undo()
    assert await redis.store.lease_owner(run.id) is None
    assert [e.type for e in await redis.store.list_timeline_events(run.id)] == ["run_status"]
    assert (await redis.store.get_run(run.id)).to_dict() == run.to_dict()
    assert not await raw(redis, "exists", lease_key(run.id))


def test_releasing_step_keys_are_the_key_functions_keys() -> None:
    from cordtrio.backends.redis.leases import inbox_key, processing_key
    from cordtrio.backends.redis.step_write import releasing_step_keys, step_keys

    for run_id in ("run-1", "a:b"):
        assert releasing_step_keys(run_id) == [
            *step_keys(run_id), inbox_key(run_id), processing_key(run_id), COMMANDS_QUEUE]
