"""Run leases and command inboxes (``cordtrio.ports.RunLeases``) on every storage backend
that has them: the memory store, fakeredis and a real Redis server.

Waits are short and bounded. Lease expiry is checked on Trio's clock (autojump) where the
backend measures TTLs on it, and in real time (a 100 ms lease) where the server does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

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
from cordtrio.ports import RunChanges, RunLeases, Store

TTL = 30.0
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def workflow() -> Workflow:
    return Workflow(id="wf-1", name="wf", steps={"fetch": Step(id="fetch", topic="job.fetch")})


def run(rid: str, status: RunStatus = RunStatus.PENDING) -> WorkflowRun:
    return WorkflowRun(id=rid, workflow_id="wf-1", status=status, created_at=T0,
                       updated_at=T0)


@pytest.fixture
def leases(store: Store) -> RunLeases:
    assert isinstance(store, RunLeases)
    return store


async def test_backend_implements_run_leases(store: Store) -> None:
    assert isinstance(store, RunLeases)


async def test_a_lease_has_one_owner_at_a_time(leases: RunLeases) -> None:
    assert await leases.lease_owner("r1") is None
    assert await leases.acquire_lease("r1", "A", TTL)
    assert not await leases.acquire_lease("r1", "B", TTL)
    assert await leases.acquire_lease("r1", "A", TTL)  # the owner again: extends
    assert await leases.lease_owner("r1") == "A"
    assert await leases.acquire_lease("r2", "B", TTL)  # leases are per run


async def test_release_is_compare_and_delete(leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    await leases.release_lease("r1", "B")  # not B's: nothing happens
    assert await leases.lease_owner("r1") == "A"
    await leases.release_lease("r1", "A")
    assert await leases.lease_owner("r1") is None
    assert await leases.acquire_lease("r1", "B", TTL)


async def test_renew_extends_what_the_owner_holds_and_reports_the_rest(
        leases: RunLeases) -> None:
    await leases.acquire_lease("mine", "A", TTL)
    await leases.acquire_lease("theirs", "B", TTL)
    lost = await leases.renew_leases("A", ["mine", "theirs", "nobodys"], TTL)
    assert lost == {"theirs", "nobodys"}
    assert await leases.lease_owner("mine") == "A"
    assert await leases.lease_owner("theirs") == "B"  # renewing never takes a lease
    assert await leases.lease_owner("nobodys") is None
    assert await leases.renew_leases("A", [], TTL) == set()


async def test_unleased_lists_the_free_runs_in_order(leases: RunLeases) -> None:
    await leases.acquire_lease("b", "A", TTL)
    assert await leases.unleased(["c", "b", "a"]) == ["c", "a"]
    assert await leases.unleased([]) == []


async def test_a_lease_expires_on_trios_clock(storage, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    if "trio_clock_ttl" not in storage.capabilities:
        pytest.skip("this backend measures TTLs on the server's clock")
    leases = storage.store
    await leases.acquire_lease("r1", "A", 10.0)
    await trio.sleep(9.0)
    assert await leases.renew_leases("A", ["r1"], 10.0) == set()
    await trio.sleep(9.0)
    assert not await leases.acquire_lease("r1", "B", 10.0)  # renewed: still A's
    await trio.sleep(10.5)
    assert await leases.lease_owner("r1") is None
    assert await leases.renew_leases("A", ["r1"], 10.0) == {"r1"}
    assert await leases.acquire_lease("r1", "B", 10.0)


async def test_a_lease_expires_on_the_servers_clock(storage) -> None:  # type: ignore[no-untyped-def]
    if "trio_clock_ttl" in storage.capabilities:
        pytest.skip("covered on Trio's clock")
    leases = storage.store
    await leases.acquire_lease("r1", "A", 0.1)
    with trio.fail_after(5):
        while await leases.lease_owner("r1") is not None:
            await trio.sleep(0.02)
    assert await leases.renew_leases("A", ["r1"], 0.1) == {"r1"}
    assert await leases.acquire_lease("r1", "B", TTL)


async def test_a_command_for_a_held_run_wakes_its_owner(leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    assert await leases.push_command("r1", b"one") == "A"
    assert await leases.push_command("r1", b"two") == "A"
    assert await leases.wait_wakeups("B", 0.05) == []  # not B's business
    assert await leases.wait_wakeups("A", 1.0) == ["r1"]
    assert await leases.take_commands("r1") == [b"one", b"two"]
    assert await leases.ack_commands("r1", "A", 2)
    assert await leases.take_commands("r1") == []


async def test_a_command_for_a_free_run_goes_to_any_engine(leases: RunLeases) -> None:
    assert await leases.push_command("r1", b"\x00bytes\xff") is None
    assert await leases.runs_with_commands() == ["r1"]
    assert await leases.wait_wakeups("B", 1.0) == ["r1"]
    assert await leases.take_commands("r1") == [b"\x00bytes\xff"]
    assert await leases.runs_with_commands() == ["r1"]  # taken, not acknowledged yet
    await leases.acquire_lease("r1", "B", TTL)
    assert await leases.ack_commands("r1", "B", 1)
    assert await leases.runs_with_commands() == []


async def test_push_unassigned_queues_for_any_engine(leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    await leases.push_unassigned("r1", b"start")
    assert await leases.wait_wakeups("B", 1.0) == ["r1"]  # even though A holds it
    assert await leases.take_commands("r1") == [b"start"]


async def test_wait_wakeups_times_out_empty(leases: RunLeases) -> None:
    with trio.fail_after(5):
        assert await leases.wait_wakeups("A", 0.05) == []


async def test_wait_wakeups_returns_when_a_command_arrives(leases: RunLeases) -> None:
    got: list[str] = []

    async def waiter() -> None:
        got.extend(await leases.wait_wakeups("A", 5.0))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.05)
            await leases.acquire_lease("r9", "A", TTL)
            await leases.push_command("r9", b"x")
    assert got == ["r9"]


async def test_releasing_with_queued_commands_hands_them_to_any_engine(
        leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    await leases.push_command("r1", b"late")
    assert await leases.wait_wakeups("A", 1.0) == ["r1"]  # A was told, but lets go
    await leases.release_lease("r1", "A")
    assert await leases.wait_wakeups("B", 1.0) == ["r1"]
    assert await leases.take_commands("r1") == [b"late"]


async def test_a_fenced_write_needs_the_lease(store: Store) -> None:
    await store.save_workflow(workflow())
    r = run("r1", RunStatus.RUNNING)
    await store.create_run(r)
    assert isinstance(store, RunLeases)
    r.steps["fetch"] = StepRun(step_id="fetch", status=StepStatus.RUNNING)
    fenced = RunChanges(steps={"fetch"}, lease_owner="A")
    event = TimelineEvent(run_id="r1", type="step_dispatched", step_id="fetch")
    with pytest.raises(LeaseLostError, match="r1"):
        await store.save_run_changes(r, fenced, [event])  # nobody holds it
    await store.acquire_lease("r1", "B", TTL)
    with pytest.raises(LeaseLostError, match="B"):
        await store.save_run_changes(r, fenced, [event])  # B holds it
    assert "fetch" not in (await store.get_run("r1")).steps
    assert await store.list_timeline_events("r1") == []
    await store.release_lease("r1", "B")
    await store.acquire_lease("r1", "A", TTL)
    await store.save_run_changes(r, fenced, [event])
    assert (await store.get_run("r1")).steps["fetch"].status == StepStatus.RUNNING
    await store.save_run_changes(r, RunChanges(lease_owner="A"), [event])  # timeline only
    assert [e.type for e in await store.list_timeline_events("r1")] == ["step_dispatched"] * 2


@pytest.mark.parametrize("removing", [False, True], ids=["step-write", "removing-a-step"])
async def test_a_fenced_write_may_release_the_lease(store: Store, removing: bool) -> None:
    """``RunChanges.release_lease`` (a finished run's last write): the lease is released
    with the write, as ``release_lease`` does — a command left for the run goes to any
    engine — and only by a write that is done: one refused releases nothing; an unfenced
    write ignores it. (``removing``: a write that removes a step with its children.)"""
    assert isinstance(store, RunLeases)
    await store.save_workflow(workflow())
    r = run("r1", RunStatus.RUNNING)
    r.steps["old"] = StepRun(step_id="old", status=StepStatus.SUCCEEDED)
    await store.create_run(r)
    r.status = RunStatus.SUCCEEDED
    last = RunChanges(header=True, steps={"old"} if removing else set(),
                      previous_status=RunStatus.RUNNING, lease_owner="A", release_lease=True)
    if removing:
        del r.steps["old"]
    event = TimelineEvent(run_id="r1", type="run_status", status="succeeded")
    await store.acquire_lease("r1", "B", TTL)
    with pytest.raises(LeaseLostError, match="B"):
        await store.save_run_changes(r, last, [event])
    assert await store.lease_owner("r1") == "B"  # refused: nothing released
    await store.release_lease("r1", "B")
    await store.acquire_lease("r1", "A", TTL)
    await store.push_command("r1", b"late")
    assert await store.wait_wakeups("A", 1.0) == ["r1"]  # A was told, and finishes
    await store.save_run_changes(r, last, [event])
    assert await store.lease_owner("r1") is None
    stored = await store.get_run("r1")
    assert stored.status == RunStatus.SUCCEEDED and ("old" in stored.steps) is not removing
    assert await store.list_run_ids_by_status("succeeded") == ["r1"]
    assert await store.wait_wakeups("B", 1.0) == ["r1"]  # the command, for any engine
    with pytest.raises(LeaseLostError):  # released: a later write of A is refused
        await store.save_run_changes(r, RunChanges(header=True, lease_owner="A"), [event])
    await store.acquire_lease("r1", "A", TTL)
    await store.save_run_changes(r, RunChanges(header=True, release_lease=True), [event])
    assert await store.lease_owner("r1") == "A"  # unfenced: not released
    assert len(await store.list_timeline_events("r1")) == 2


async def test_a_fenced_write_to_a_missing_run_is_not_found(store: Store) -> None:
    assert isinstance(store, RunLeases)
    await store.acquire_lease("ghost", "A", TTL)
    with pytest.raises(NotFoundError, match="ghost"):
        await store.save_run_changes(run("ghost"), RunChanges(header=True, lease_owner="A"))
    with pytest.raises(NotFoundError):
        await store.get_run("ghost")


async def test_taken_commands_stay_until_acknowledged(leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    await leases.push_command("r1", b"start")
    assert await leases.take_commands("r1") == [b"start"]
    # A dies before persisting: the command is still there for the next taker
    assert await leases.runs_with_commands() == ["r1"]
    await leases.push_command("r1", b"approve")
    assert await leases.take_commands("r1") == [b"start", b"approve"]  # oldest first
    assert await leases.take_commands("r1") == [b"start", b"approve"]  # nothing new
    assert await leases.ack_commands("r1", "A", 1)
    await leases.push_command("r1", b"cancel")
    assert await leases.take_commands("r1") == [b"approve", b"cancel"]
    assert await leases.ack_commands("r1", "A", 2)
    assert await leases.runs_with_commands() == []
    assert await leases.take_commands("r1") == []
    assert await leases.ack_commands("r1", "A", 5)  # more than there are: empties it
    assert await leases.runs_with_commands() == []


async def test_only_the_lease_holder_acknowledges(leases: RunLeases) -> None:
    await leases.acquire_lease("r1", "A", TTL)
    await leases.push_command("r1", b"start")
    assert await leases.take_commands("r1") == [b"start"]
    await leases.release_lease("r1", "A")
    assert not await leases.ack_commands("r1", "A", 1)  # nobody holds it: kept
    await leases.acquire_lease("r1", "B", TTL)
    assert not await leases.ack_commands("r1", "A", 1)  # B holds it: kept for B
    assert await leases.take_commands("r1") == [b"start"]
    assert await leases.ack_commands("r1", "B", 1)
    assert await leases.take_commands("r1") == []


async def test_releasing_with_unacknowledged_commands_hands_them_on(
        leases: RunLeases) -> None:
    await leases.push_unassigned("r1", b"start")
    assert await leases.wait_wakeups("A", 1.0) == ["r1"]
    await leases.acquire_lease("r1", "A", TTL)
    assert await leases.take_commands("r1") == [b"start"]
    await leases.release_lease("r1", "A")  # let go before persisting (engine closing)
    assert await leases.wait_wakeups("B", 1.0) == ["r1"]
    assert await leases.take_commands("r1") == [b"start"]


async def test_a_pending_start_taken_by_a_dead_owner_is_found_again(
        leases: RunLeases) -> None:
    """The ``cordtrio runs submit`` + ``kill -9`` case: the Start was taken, never applied,
    and nobody was told again — the takeover scan must still see the run."""
    await leases.push_unassigned("r1", b"start")
    assert await leases.wait_wakeups("A", 1.0) == ["r1"]
    await leases.acquire_lease("r1", "A", 0.05)
    assert await leases.take_commands("r1") == [b"start"]
    with trio.fail_after(5):  # A never renews (it is dead): the lease runs out
        while await leases.lease_owner("r1") is not None:
            await trio.sleep(0.02)
    assert await leases.runs_with_commands() == ["r1"]
    assert await leases.unleased(["r1"]) == ["r1"]
    assert await leases.acquire_lease("r1", "B", TTL)
    assert await leases.take_commands("r1") == [b"start"]
    assert await leases.ack_commands("r1", "B", 1)
    assert await leases.runs_with_commands() == []
