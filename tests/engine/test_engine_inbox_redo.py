"""The per-run command inbox is at-least-once (multi-engine mode, memory store, autojump):
commands an owner took but never persisted — it died, or lost its lease — are applied by
the next owner, and applying a command twice is harmless."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import trio
from test_engine_kit import LEASE_TTL as TTL
from test_engine_kit import WF, ok, start_engine, step, workflow

from cordtrio.backends.memory import MemoryStore
from cordtrio.client import Client
from cordtrio.core.events import Approve, CancelRun, ResultReceived, Start
from cordtrio.engine import open_engine
from cordtrio.errors import CordtrioError, StoreError
from cordtrio.model import RunStatus, StepStatus, StepType, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges
from cordtrio.wire_commands import encode_command


class StallingStore(MemoryStore):
    """A store an engine can hang on: while ``stall_owner`` is set, that engine's fenced
    writes never return (a process frozen, then killed, between taking its commands and
    persisting them); with ``renewals_fail`` its lease renewals fail (a store that does not
    answer it — so it must let its runs go). A stalled write that is cancelled ends both
    (``unstalled`` is set): the store answers again."""

    def __init__(self) -> None:
        super().__init__()
        self.stall_owner = ""
        self.renewals_fail = False
        self.stalled = trio.Event()
        self.unstalled = trio.Event()

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Sequence[TimelineEvent] = ()) -> None:
        if self.stall_owner and changes.lease_owner == self.stall_owner:
            self.stalled.set()
            try:
                await trio.sleep_forever()
            finally:
                self.stall_owner = ""
                self.renewals_fail = False
                self.unstalled.set()
        await super().save_run_changes(run, changes, timeline)

    async def renew_leases(self, owner: str, run_ids: Sequence[str], ttl: float) -> set[str]:
        if self.renewals_fail and owner == self.stall_owner:
            raise StoreError(f"renew leases of {owner}: injected outage")
        return await super().renew_leases(owner, run_ids, ttl)


def gated() -> Any:
    return workflow(step("gate", type=StepType.APPROVAL), step("after", depends_on=["gate"]))


async def test_a_start_taken_by_an_engine_that_died_is_applied_by_the_next(
        bus, payloads, clock, autojump_clock) -> None:
    store = StallingStore()
    await store.save_workflow(gated())
    run_id = await Client(store, clock=clock).submit(WF)
    store.stall_owner = "A"
    async with trio.open_nursery() as nursery:
        a, a_scope = await start_engine(store, bus, payloads, clock, "A", nursery)
        with trio.fail_after(60):
            await store.stalled.wait()  # A took the Start and is writing it: kill -9 now
        assert a.leases is not None
        a.leases.crash()
        a_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # the state the serve-crash e2e test found: pending, lease left behind, inbox empty
        assert (await store.get_run(run_id)).status == RunStatus.PENDING
        assert await store.lease_owner(run_id) == "A"
        assert await store.runs_with_commands() == [run_id]  # taken, never acknowledged
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery)
        await trio.sleep(TTL + TTL / 2 + 1)  # A's lease expires; B's scan finds the run
        run = await store.get_run(run_id)
        assert run.status == RunStatus.WAITING
        assert run.steps["gate"].status == StepStatus.WAITING
        assert await store.lease_owner(run_id) == "B"
        assert await store.runs_with_commands() == []  # applied, persisted, acknowledged
        await b.approve_step(run_id, "gate")
        await b.handle_job_result(ok(f"{run_id}:after@1"))
        assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED
        nursery.cancel_scope.cancel()


async def test_a_start_taken_before_a_lost_lease_is_applied_by_the_same_engine_later(
        bus, payloads, clock, autojump_clock) -> None:
    """One engine alone, starved: its write hangs and its renewals fail, so it gives the
    run up (the lease is lost); its own takeover scan later re-applies the Start."""
    store = StallingStore()
    await store.save_workflow(gated())
    run_id = await Client(store, clock=clock).submit(WF)
    store.stall_owner = "A"
    store.renewals_fail = True
    async with trio.open_nursery() as nursery:
        a, _ = await start_engine(store, bus, payloads, clock, "A", nursery)
        with trio.fail_after(60):
            await store.stalled.wait()
        with trio.fail_after(TTL + 1):  # the keeper declares the lease lost: cancels the
            await store.unstalled.wait()  # write, the task ends without the Start applied
        await trio.sleep(TTL)  # the lease has expired; a takeover scan picks the run up
        assert a.active_runs == 1  # a new task, which re-applied the Start
        run = await store.get_run(run_id)
        assert run.status == RunStatus.WAITING
        assert await store.runs_with_commands() == []
        nursery.cancel_scope.cancel()


async def test_commands_applied_twice_are_harmless(
        store, bus, payloads, clock, autojump_clock) -> None:
    """Every command can be re-applied by a new owner (persisted, not yet acknowledged):
    Start on a started run, a result already folded in, an Approve of a step no longer
    waiting (its error is swallowed: nobody waits for a queued command) and Cancel twice."""
    await store.save_workflow(workflow(
        step("gate", type=StepType.APPROVAL), step("a", depends_on=["gate"]),
        step("gate2", type=StepType.APPROVAL, depends_on=["a"])))
    dispatched: list[str] = []
    client = Client(store, clock=clock)

    async def settle() -> None:
        with trio.fail_after(60):
            while await store.runs_with_commands():
                await trio.sleep(0.1)

    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True,
                           on_step_dispatched=lambda r, s, j: dispatched.append(j)) as engine:
        run_id = await client.submit(WF)
        await store.push_unassigned(run_id, encode_command(Start()))
        await settle()
        run = await store.get_run(run_id)
        assert run.status == RunStatus.WAITING and run.steps["gate"].status == StepStatus.WAITING
        assert len(await store.list_timeline_events(run_id)) > 0
        events_after_start = len(await store.list_timeline_events(run_id))
        await store.push_command(run_id, encode_command(Start()))  # again: a no-op
        await settle()
        assert len(await store.list_timeline_events(run_id)) == events_after_start

        await client.approve_step(run_id, "gate")
        await store.push_command(run_id, encode_command(Approve("gate")))  # not waiting now
        await settle()
        assert engine.active_runs == 1  # the task did not crash on the refused Approve
        assert dispatched == [f"{run_id}:a@1"]

        result = encode_command(ResultReceived(ok(f"{run_id}:a@1")))
        await store.push_command(run_id, result)
        await store.push_command(run_id, result)  # the same result twice
        await settle()
        run = await store.get_run(run_id)
        assert run.steps["a"].status == StepStatus.SUCCEEDED
        assert run.steps["a"].attempts == 1
        assert run.steps["gate2"].status == StepStatus.WAITING
        assert dispatched == [f"{run_id}:a@1"]  # nothing dispatched again

        await store.push_command(run_id, encode_command(CancelRun()))
        await store.push_command(run_id, encode_command(CancelRun()))
        await settle()
        run = await store.get_run(run_id)
        assert run.status == RunStatus.CANCELLED
        assert run.steps["gate2"].status == StepStatus.CANCELLED
        await store.push_command(run_id, encode_command(CancelRun()))  # a finished run
        await settle()
        assert (await store.get_run(run_id)).status == RunStatus.CANCELLED


class CorruptRunStore(MemoryStore):
    """Every write of the runs in ``corrupt`` fails with a definite error (like a run hash
    holding garbage): the run's task crashes applying its commands."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt: set[str] = set()
        self.writes: Counter[str] = Counter()

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Sequence[TimelineEvent] = ()) -> None:
        self.writes[run.id] += 1
        if run.id in self.corrupt:
            raise CordtrioError(f"run {run.id}: corrupt run hash")
        await super().save_run_changes(run, changes, timeline)


async def test_commands_that_crash_their_task_are_dropped_not_retried_forever(
        bus, payloads, clock, autojump_clock) -> None:
    store = CorruptRunStore()
    await store.save_workflow(gated())
    client = Client(store, clock=clock)
    bad = await client.submit(WF)
    store.corrupt.add(bad)
    good = await client.submit(WF)
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True):
        await trio.sleep(3 * TTL)
        assert store.writes[bad] == 1  # one crash, then the Start was acknowledged
        assert await store.runs_with_commands() == []
        assert (await store.get_run(bad)).status == RunStatus.PENDING
        assert (await store.get_run(good)).status == RunStatus.WAITING  # others go on


async def test_undecodable_commands_are_acknowledged(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(gated())
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as engine:
        run_id = await engine.submit(WF)
        await store.push_command(run_id, b"not cbor")  # woken: a drain finds only this
        await trio.sleep(1)
        assert await store.runs_with_commands() == []
        await engine.cancel_run(run_id)
        await store.push_command(run_id, b"\xa1")  # a finished run: loaded again for it
        await trio.sleep(TTL)
        assert await store.runs_with_commands() == []
        assert engine.active_runs == 0
