"""A submitted run created by its first write: over a store that can
(``ports.CreatingWrites``), ``Engine.submit`` writes nothing, and the run task's write of
the start creates the run, whole, in one write (in multi-engine mode with its lease). An id
in use fails the submit with ``InvalidStateError`` and publishes nothing; an idempotency
key keeps the submit that writes the run first; a retried creating write applies once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
from test_engine_kit import LEASE_TTL as TTL
from test_engine_kit import WF, Tap, ok, step, timeline_types, workflow

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.errors import InvalidStateError, StoreError
from cordtrio.model import RunStatus, StepStatus, StepType, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges


class Writes(MemoryStore):
    """Records every run write and create; ``lose_reply``: the first creating write is
    applied, then fails as if its reply was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []  # "create" (create_run) or a write's created token/""
        self.lose_reply = False

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Sequence[TimelineEvent] = ()) -> None:
        self.writes.append(changes.created and "creating")
        await super().save_run_changes(run, changes, timeline)
        if changes.created and self.lose_reply:
            self.lose_reply = False
            raise StoreError(f"run {run.id}: reply lost (the write was applied)")


def counting_creates(store: MemoryStore) -> list[str]:
    """The ids ``store.create_run`` creates (wrapped on the instance: the class keeps its
    ``creates_runs_on_write``)."""
    created: list[str] = []
    create = store.create_run

    async def counted(run: WorkflowRun) -> None:
        created.append(run.id)
        await create(run)

    store.create_run = counted  # type: ignore[method-assign]
    return created


def fixed_ids(*ids: str) -> Any:
    it = iter(ids)
    return lambda: next(it)


async def test_a_submitted_run_is_created_by_its_first_write(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object) -> None:
    store = Writes()
    created = counting_creates(store)
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        run_id = await engine.submit(WF, {"x": 1})
        # read-your-writes: the run is stored, started, its job published
        run = await store.get_run(run_id)
        assert run.status == RunStatus.RUNNING and run.input == {"x": 1}
        assert run.steps["a"].status == StepStatus.RUNNING
        assert store.writes == ["creating"] and created == []
        assert await timeline_types(store, run_id) == ["run_status", "step_dispatched"]
        assert submits.job_ids == [run.steps["a"].job_id]
        await engine.handle_job_result(ok(run.steps["a"].job_id))
        assert (await engine.wait_run(run_id)).status == RunStatus.SUCCEEDED
    assert store.writes == ["creating", ""]  # the next write is an ordinary one


async def test_a_keyed_submit_creates_the_run_before_starting_it(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        autojump_clock: object) -> None:
    store = Writes()
    created = counting_creates(store)
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        run_id = await engine.submit(WF, idempotency_key="k")
        assert created == [run_id] and store.writes == [""]
        assert await engine.submit(WF, idempotency_key="k") == run_id
        assert created == [run_id] and store.writes == [""]


async def test_an_id_in_use_fails_the_submit_and_publishes_nothing(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object, caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    await store.save_workflow(workflow(step("a")))
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL), id="gated"))
    async with open_engine(store, bus, payloads=payloads, clock=clock,
                           new_id=fixed_ids("r1", "r2", "r1", "r2")) as engine:
        assert await engine.submit(WF) == "r1"  # its job runs: its task is here
        assert await engine.submit("gated") == "r2"  # waiting: its task is gone (parked)
        assert engine.active_runs == 1
        before = {rid: (await store.get_run(rid)).to_dict() for rid in ("r1", "r2")}
        jobs = submits.job_ids
        with pytest.raises(InvalidStateError, match="r1"):  # told by the engine
            await engine.submit("gated")
        with pytest.raises(InvalidStateError, match="r2"):  # told by the store
            await engine.submit(WF)
        assert {rid: (await store.get_run(rid)).to_dict() for rid in ("r1", "r2")} == before
        assert submits.job_ids == jobs and engine.active_runs == 1
        # both runs are still driven as before
        await engine.handle_job_result(ok(jobs[0]))
        await engine.approve_step("r2", "gate")
        for rid in ("r1", "r2"):
            assert (await engine.wait_run(rid)).status == RunStatus.SUCCEEDED
    assert "crashed" not in caplog.text


async def test_a_creating_write_retried_after_a_lost_reply_applies_once(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object) -> None:
    store = Writes()
    store.lose_reply = True
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        run_id = await engine.submit(WF)
        assert store.writes == ["creating", "creating"]  # retried: the same write
        assert (await store.get_run(run_id)).status == RunStatus.RUNNING
        assert await timeline_types(store, run_id) == ["run_status", "step_dispatched"]
        assert len(submits.job_ids) == 1


class Refusing(MemoryStore):
    """Refuses every creating write for good, as a store check would."""

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Sequence[TimelineEvent] = ()) -> None:
        if changes.created:
            raise InvalidStateError(f"run {run.id!r}: refused for the test")
        await super().save_run_changes(run, changes, timeline)


async def test_a_refused_start_creates_no_run(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object, caplog: pytest.LogCaptureFixture) -> None:
    store = Refusing()
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        with pytest.raises(InvalidStateError, match="refused for the test"):
            await engine.submit(WF)
        assert engine.active_runs == 0
        assert await store.list_run_ids_by_status("running") == []
        assert submits.job_ids == []
    assert "crashed" not in caplog.text


async def test_multi_engine_submit_holds_the_lease_it_created_with_the_run(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        autojump_clock: object) -> None:
    store = Writes()
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    acquired: list[str] = []
    acquire = store.acquire_lease

    async def counted(run_id: str, owner: str, ttl: float) -> bool:
        acquired.append(run_id)
        return await acquire(run_id, owner, ttl)

    store.acquire_lease = counted  # type: ignore[method-assign]
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        assert store.writes == ["creating"] and acquired == []
        assert await store.lease_owner(run_id) == "A"
        await trio.sleep(3 * TTL)  # renewed all along
        assert await store.lease_owner(run_id) == "A"
        await a.approve_step(run_id, "gate")
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED
        assert acquired == []


async def test_a_lease_held_by_another_engine_fails_the_submit_clearly(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object) -> None:
    store = MemoryStore()
    await store.save_workflow(workflow(step("a")))
    assert await store.acquire_lease("r1", "B", 1000 * TTL)
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True,
                           new_id=fixed_ids("r1")) as a:
        with pytest.raises(InvalidStateError, match=r"r1.*not created.*B"):
            await a.submit(WF)
        assert a.active_runs == 0
    assert submits.job_ids == []
    assert await store.list_run_ids_by_status("running") == []
    assert await store.lease_owner("r1") == "B"


async def test_a_store_that_observes_creates_keeps_them(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        autojump_clock: object) -> None:
    class Observing(MemoryStore):
        async def create_run(self, run: WorkflowRun) -> None:
            created.append(run.id)
            await super().create_run(run)

    created: list[str] = []
    store = Observing()
    assert not store.creates_runs_on_write
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        assert created == [await engine.submit(WF)]


async def test_multi_engine_an_id_another_engine_drives_fails_the_submit(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        submits: Tap, autojump_clock: object) -> None:
    store = MemoryStore()
    await store.save_workflow(workflow(step("a")))
    existing = WorkflowRun(id="r1", workflow_id=WF, status=RunStatus.RUNNING)
    await store.create_run(existing)
    assert await store.acquire_lease("r1", "B", 1000 * TTL)  # B drives it
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True, recover=False,
                           new_id=fixed_ids("r1")) as a:
        with pytest.raises(InvalidStateError, match="r1"):
            await a.submit(WF)
        assert a.active_runs == 0
    assert submits.job_ids == []
    assert await store.lease_owner("r1") == "B"
    assert (await store.get_run("r1")).steps == {}


class SlowLostReply(Writes):
    """The first creating write is applied, then its reply comes back ``late`` seconds
    later as a failure (a reply lost, found out by a timeout)."""

    late = 2 * TTL

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Sequence[TimelineEvent] = ()) -> None:
        await MemoryStore.save_run_changes(self, run, changes, timeline)
        if changes.created and self.late:
            await trio.sleep(self.late)
            self.late = 0
            raise StoreError(f"run {run.id}: reply lost (the write was applied)")


async def test_a_creating_write_retried_after_its_lease_lapsed_does_not_drive_the_run(
        bus: MemoryBus, payloads: MemoryPayloadStore, clock: TrioWallClock,
        autojump_clock: object) -> None:
    """Engine A's creating write is applied but its reply is lost for two TTLs: the lease
    it took lapses (a run is not renewed before its first write is done) and engine B takes
    the run over. A's retry finds the run its own, but A no longer holds the lease: it does
    not dispatch the job, and its submit returns the run, which B drives."""
    store = SlowLostReply()
    await store.save_workflow(workflow(step("a")))
    dispatched: list[tuple[str, str | None]] = []

    def hook(name: str) -> Any:
        def on_dispatched(run_id: str, step_id: str, job_id: str) -> None:
            dispatched.append((name, store._lease_book.holder(run_id)))
        return on_dispatched

    async with (
        open_engine(store, bus, payloads=payloads, clock=clock, engine_id="B",
                    lease_ttl=TTL, multi_engine=True, on_step_dispatched=hook("B")) as b,
        open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                    lease_ttl=TTL, multi_engine=True, recover=False,
                    on_step_dispatched=hook("A")) as a,
    ):
        run_id = await a.submit(WF)
        assert await store.lease_owner(run_id) == "B"
        assert all(name == holder for name, holder in dispatched), dispatched
        assert not [name for name, _ in dispatched if name == "A"]
        assert not a.ownership.held and not a.ownership._creating
        assert not a.ownership._create_sent
        await b.handle_job_result(ok(f"{run_id}:a@1"))
        assert (await b.wait_run(run_id)).status == RunStatus.SUCCEEDED
