"""An engine step's write reads nothing when the store knows the run's fields
(``field_mirror``), and is still right when what it knows is wrong: the run deleted, its
fields changed behind its back, a write whose reply was lost that ran all the same."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from redis_kit import T0, a_run, raw

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.errors import NotFoundError, StoreError
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges

EVENT = TimelineEvent(type="step_dispatched", step_id="s1")


def next_step(run: WorkflowRun, i: int) -> RunChanges:
    """s<i> succeeds and s<i+1> is dispatched (header, both steps, s<i>'s output)."""
    done, new = f"s{i}", f"s{i + 1}"
    run.steps[done].status = StepStatus.SUCCEEDED
    run.steps[new] = StepRun(step_id=new, status=StepStatus.RUNNING, attempts=1)
    run.context.setdefault("steps", {})[done] = {"output": {"i": i}}
    run.updated_at = T0 + timedelta(seconds=i + 1)
    return RunChanges(header=True, steps={done, new}, context_steps={done},
                      previous_status=RunStatus.RUNNING)


async def counted(r: RedisBackends, action: Any) -> dict[str, int]:
    counter = CommandCounter(r.redis)
    try:
        await action()
        return dict(counter.counts)
    finally:
        counter.close()


async def same_as_stored(r: RedisBackends, run: WorkflowRun) -> None:
    stored = await r.store.get_run(run.id)
    assert stored.to_dict() == run.to_dict()
    assert list(stored.steps) == list(run.steps)
    assert list(stored.context["steps"]) == list(run.context["steps"])


async def test_a_run_the_store_created_is_written_without_reading_it(
        redis: RedisBackends) -> None:
    run = await a_run(redis)
    for i in range(4):
        counts = await counted(redis, lambda i=i: redis.store.save_run_changes(
            run, next_step(run, i), [EVENT]))
        assert "hmget" not in counts, counts
        assert counts["hset"] == 1
    await same_as_stored(redis, run)


async def test_a_run_read_back_is_written_without_reading_it_and_a_copy_reads(
        redis: RedisBackends) -> None:
    await a_run(redis)
    run = await redis.store.get_run("run-1")
    counts = await counted(redis, lambda: redis.store.save_run_changes(run, next_step(run, 0)))
    assert "hmget" not in counts
    copy = WorkflowRun.from_dict(run.to_dict())  # not what the store read: it reads first
    counts = await counted(redis, lambda: redis.store.save_run_changes(copy, next_step(copy, 1)))
    assert counts["hmget"] == 1
    await same_as_stored(redis, copy)


async def test_a_run_deleted_under_a_known_run_is_not_found_and_nothing_written(
        redis: RedisBackends) -> None:
    run = await a_run(redis)
    await redis.store.save_run_changes(run, next_step(run, 0))
    await redis.store.delete_run(run.id)
    with pytest.raises(NotFoundError):
        await redis.store.save_run_changes(run, next_step(run, 1), [EVENT])
    assert not await raw(redis, "exists", "wf:run:run-1", "wf:run:timeline:run-1")
    assert await redis.store.list_run_ids_by_status("running") == []


async def test_fields_changed_behind_the_stores_back_keep_their_ranks(
        redis: RedisBackends) -> None:
    run = await a_run(redis)
    await redis.store.save_run_changes(run, next_step(run, 0))
    # s1 removed, with its rank: the next write (which writes s1) believes it is there
    await raw(redis, "hdel", "wf:run:run-1", "step:s1", "ord:step:s1")
    await redis.store.save_run_changes(run, next_step(run, 1))
    assert await raw(redis, "hexists", "wf:run:run-1", "ord:step:s1")
    await same_as_stored(redis, run)
    counts = await counted(redis, lambda: redis.store.save_run_changes(run, next_step(run, 2)))
    assert counts["hmget"] == 1  # what it knew was wrong: it reads from now on
    await same_as_stored(redis, run)


async def test_a_write_whose_reply_was_lost_is_retried_without_reordering(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    run = await a_run(redis)
    await redis.store.save_run_changes(run, next_step(run, 0))
    original = redis.redis.script

    async def runs_then_fails(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise StoreError("reply lost")

    monkeypatch.setattr(redis.redis, "script", runs_then_fails)
    changes = next_step(run, 1)
    with pytest.raises(StoreError):
        await redis.store.save_run_changes(run, changes)  # ran, but we do not know it
    monkeypatch.setattr(redis.redis, "script", original)
    counts = await counted(redis, lambda: redis.store.save_run_changes(run, changes))
    assert counts["hmget"] == 1  # the retry reads: s2 has its rank already, kept
    await same_as_stored(redis, run)


async def test_a_write_refused_before_it_is_sent_leaves_what_the_store_knew(
        redis: RedisBackends) -> None:
    """The step write updates the known field names as it builds its arguments: a write
    refused before it is sent (payloads without a committed payload store) drops them,
    and the next write reads."""
    run = await a_run(redis)
    changes = next_step(run, 0)
    changes.payloads = {"ctx:run-1:s1@1": b"{}"}
    with pytest.raises(ValueError, match="commits_payloads_of"):
        await redis.store.save_run_changes(run, changes)
    changes.payloads = {}
    counts = await counted(redis, lambda: redis.store.save_run_changes(run, changes))
    assert counts["hmget"] == 1
    await same_as_stored(redis, run)


def test_names_kept_after_a_write_stay_unless_too_many_or_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``FieldMirror.kept``: the set a write updated in place stays mirrored; one grown past
    ``MAX_MIRRORED`` goes; an entry replaced or dropped meanwhile is not put back."""
    from cordtrio.backends.redis import field_mirror
    mirror = field_mirror.FieldMirror()
    run = WorkflowRun(id="r")
    mirror.put(run, {"header"})
    names = mirror.get(run)
    assert names is not None
    names.add("step:s0")
    mirror.kept(run, names)
    assert mirror.get(run) == {"header", "step:s0"}
    mirror.put(run, {"header", "other"})  # replaced while the write was in flight
    mirror.kept(run, names)
    assert mirror.get(run) == {"header", "other"}
    mirror.forget(run)
    mirror.kept(run, names)
    assert mirror.get(run) is None
    mirror.put(run, names)
    monkeypatch.setattr(field_mirror, "MAX_MIRRORED", 1)
    mirror.kept(run, names)
    assert mirror.get(run) is None


async def test_a_run_mirrored_until_its_names_grow_past_the_limit_then_read(
        redis: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    from cordtrio.backends.redis import field_mirror
    run = await a_run(redis)
    await redis.store.save_run_changes(run, next_step(run, 0), [EVENT])
    assert redis.store._mirror.get(run) is not None
    monkeypatch.setattr(field_mirror, "MAX_MIRRORED", 8)
    await redis.store.save_run_changes(run, next_step(run, 1), [EVENT])
    assert redis.store._mirror.get(run) is None  # grew past 8 names: dropped
    counts = await counted(redis, lambda: redis.store.save_run_changes(
        run, next_step(run, 2), [EVENT]))
    assert counts.get("hmget") == 1
    await same_as_stored(redis, run)
