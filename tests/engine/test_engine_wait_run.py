"""``Engine.wait_run``: waiting for a run to end, and the final runs an engine keeps for
the ``wait_run`` that comes after a run ended (``engine/ended_runs.py``): answered without
a read, and a deleted run not found (docs/decisions.md)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_engine_kit import WF, create_pending_run, step, succeed, workflow

from cordtrio.backends.memory import MemoryStore
from cordtrio.engine import ended_runs, open_engine
from cordtrio.errors import NotFoundError
from cordtrio.model import RunStatus


async def test_wait_run_returns_once_terminal(engine, save):
    await save(step("a"))
    run_id = await engine.submit(WF)
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await engine.wait_run(run_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # still running
        await succeed(engine, f"{run_id}:a@1")
    assert got[0].id == run_id and got[0].status == RunStatus.SUCCEEDED
    assert (await engine.wait_run(run_id)).status == RunStatus.SUCCEEDED  # already terminal


async def test_every_waiter_gets_its_own_copy_of_the_finished_run(engine, store, save):
    await save(step("a"))
    run_id = await engine.submit(WF)
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await engine.wait_run(run_id))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await succeed(engine, f"{run_id}:a@1")
    stored = (await store.get_run(run_id)).to_dict()
    assert [run.to_dict() for run in got] == [stored] * 3
    assert len({id(run) for run in got}) == 3  # a caller may change what it got
    got[0].labels["mine"] = "x"
    assert "mine" not in (await engine.wait_run(run_id)).labels


def count_reads(store: MemoryStore) -> list[str]:
    """The run ids ``store.get_run`` is called with from now on."""
    reads: list[str] = []
    get_run = store.get_run

    async def counted(run_id: str) -> Any:
        reads.append(run_id)
        return await get_run(run_id)

    store.get_run = counted  # type: ignore[method-assign]
    return reads


async def test_a_run_that_ended_before_the_wait_is_answered_without_a_read(
        engine, store, save):
    """Nobody waited when the run ended: its task left the final run with the engine, and
    ``wait_run`` answers with it, which is what the store holds."""
    await save(step("a"))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1")
    assert not engine.is_active(run_id)
    reads = count_reads(store)
    got = await engine.wait_run(run_id)
    assert reads == []
    stored = (await store.get_run(run_id)).to_dict()
    assert got.to_dict() == stored
    again = await engine.wait_run(run_id)  # given once: the next caller reads the store
    assert reads == [run_id, run_id] and again is not got and again.to_dict() == stored
    assert run_id not in engine._waits.finishes  # nothing registered, nothing left behind


async def test_a_run_deleted_after_it_ended_is_not_found(engine, store, save):
    await save(step("a"))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1")
    await store.delete_run(run_id)
    with pytest.raises(NotFoundError):
        await engine.wait_run(run_id)


def count_presence_checks(store: MemoryStore) -> list[list[str]]:
    """The run ids ``store.missing_runs`` is asked about from now on."""
    asked: list[list[str]] = []
    missing_runs = store.missing_runs

    async def counted(run_ids: Any) -> list[str]:
        asked.append(list(run_ids))
        return await missing_runs(run_ids)

    store.missing_runs = counted  # type: ignore[method-assign]
    return asked


async def test_a_run_that_just_ended_is_answered_without_asking_the_store(
        engine, store, save):
    await save(step("a"))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1")
    asked, reads = count_presence_checks(store), count_reads(store)
    assert (await engine.wait_run(run_id)).status == RunStatus.SUCCEEDED
    assert asked == [] and reads == []


async def test_a_deletion_through_the_store_makes_the_next_kept_run_checked(
        engine, store, save):
    """Any run deleted through the engine's store object (not only the one waited for)
    makes the next take of a kept run ask the store whether it still exists."""
    await save(step("a"))
    first, second = await engine.submit(WF), await engine.submit(WF)
    for run_id in (first, second):
        await succeed(engine, f"{run_id}:a@1")
    await store.delete_run(first)
    asked = count_presence_checks(store)
    assert (await engine.wait_run(second)).status == RunStatus.SUCCEEDED
    assert asked == [[second]]
    with pytest.raises(NotFoundError):
        await engine.wait_run(first)


async def test_a_deletion_elsewhere_is_seen_once_the_kept_run_is_old(
        engine, store, save, autojump_clock):
    """A deletion the engine's store object did not make (another process's) is not seen
    within ``ENDED_TRUSTED`` seconds of the run's end; after that the store is asked."""
    await save(step("a"))
    fresh, old = await engine.submit(WF), await engine.submit(WF)
    for run_id in (fresh, old):
        await succeed(engine, f"{run_id}:a@1")
    counted = store.runs_deleted
    for run_id in (fresh, old):
        await store.delete_run(run_id)
    store.runs_deleted = counted  # as another process's deletions: not counted here
    got = await engine.wait_run(fresh)  # within the trusted time: the final run it kept
    assert got.id == fresh and got.status == RunStatus.SUCCEEDED
    await trio.sleep(ended_runs.ENDED_TRUSTED)
    with pytest.raises(NotFoundError):
        await engine.wait_run(old)


async def test_a_deletion_after_the_last_write_before_its_reply_is_seen(bus, payloads):
    """The run's last write is applied and its reply is on its way (a store out of
    process) when the run is deleted through the same store object: the mark the task
    took as it sent the write is older than the deletion, which is seen."""

    class SlowReplies(MemoryStore):
        written = trio.Event()
        deleted = trio.Event()

        async def save_run_changes(self, run: Any, changes: Any, timeline: Any = ()) -> None:
            await super().save_run_changes(run, changes, timeline)
            if run.status.is_terminal:
                self.written.set()
                await self.deleted.wait()  # the reply on its way back

    store = SlowReplies()
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)

        async def delete() -> None:
            await store.written.wait()
            await store.delete_run(run_id)
            store.deleted.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete)
            await succeed(engine, f"{run_id}:a@1")
        with pytest.raises(NotFoundError):
            await engine.wait_run(run_id)


async def test_a_new_task_for_an_ended_run_replaces_the_kept_run(engine, store, save):
    """A new task may change the run: what it kept is dropped when it starts, and the new
    task's own final run (loaded from the store) is kept when it ends."""
    await save(step("a"))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1")
    first, *_ = engine._ended[run_id]
    await engine.cancel_run(run_id)  # a terminal run is left as it is, by a new task
    assert engine._ended[run_id][0] is not first
    reads = count_reads(store)
    got = await engine.wait_run(run_id)
    assert reads == [] and got.to_dict() == (await store.get_run(run_id)).to_dict()


async def test_an_engine_keeps_a_bounded_number_of_ended_runs(engine, store, save,
                                                              monkeypatch):
    monkeypatch.setattr(ended_runs, "ENDED_KEPT", 2)
    await save(step("a"))
    run_ids = [await engine.submit(WF) for _ in range(3)]
    for run_id in run_ids:
        await succeed(engine, f"{run_id}:a@1")
    reads = count_reads(store)
    for run_id in run_ids:
        assert (await engine.wait_run(run_id)).status == RunStatus.SUCCEEDED
    assert reads == run_ids[:1]  # the oldest was dropped


async def test_waiting_for_a_created_run_waits_until_it_is_started_and_ends(
        engine, store, save, autojump_clock):
    """A run not finished and not driven here takes the waiting path after the first
    read: it is woken when a task of this engine finishes the run."""
    await save(step("a"))
    await create_pending_run(store, "r1")
    got: list[Any] = []
    done = trio.Event()

    async def waiter() -> None:
        got.append(await engine.wait_run("r1", poll_interval=3600))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await engine.start_run(WF, "r1")
        await succeed(engine, "r1:a@1")
        with trio.fail_after(60):  # woken by the task, not by the hour-long poll
            await done.wait()
    assert got[0].status == RunStatus.SUCCEEDED
