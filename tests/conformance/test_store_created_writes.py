"""A write that creates the run (``RunChanges.created``, ``ports.CreatingWrites``) on every
storage backend: the whole run with its indexes, timeline, job inputs and (fenced) lease in
one write, or nothing at all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cordtrio.errors import InvalidStateError, LeaseLostError, NotFoundError
from cordtrio.model import (
    RunStatus,
    StepRun,
    StepStatus,
    TimelineEvent,
    WorkflowRun,
)
from cordtrio.ports import CreatingWrites, PayloadStore, RunChanges, RunLeases, Store

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TTL = 30.0


def started(rid: str = "r1", status: RunStatus = RunStatus.RUNNING) -> WorkflowRun:
    """A run as its start leaves it: a step running, an output in its context."""
    run = WorkflowRun(id=rid, workflow_id="wf-1", org_id="org", status=status,
                      input={"x": 1}, created_at=T0, updated_at=T0, started_at=T0)
    run.steps["a"] = StepRun(step_id="a", status=StepStatus.RUNNING, job_id=f"{rid}:a:1",
                             attempts=1, started_at=T0)
    run.context["steps"] = {"setup": {"ok": True}}
    run.context["note"] = "hello"
    return run


def rows() -> list[TimelineEvent]:
    return [TimelineEvent(type="run_status", status="running", time=T0),
            TimelineEvent(type="step_dispatched", step_id="a", time=T0)]


def creating(token: str = "t-1", **more: object) -> RunChanges:
    # the parts named do not matter: a creating write writes all of the run
    return RunChanges(header=True, steps={"a"}, previous_status=RunStatus.PENDING,
                      created=token, **more)  # type: ignore[arg-type]


async def test_backend_says_it_can_create_a_run_with_its_write(store: Store) -> None:
    assert isinstance(store, CreatingWrites) and store.creates_runs_on_write


async def test_a_creating_write_stores_the_whole_run_and_indexes_it(store: Store) -> None:
    run = started()
    await store.save_run_changes(run, creating(), rows())
    assert (await store.get_run("r1")).to_dict() == run.to_dict()
    assert [e.type for e in await store.list_timeline_events("r1")] == [
        "run_status", "step_dispatched"]
    assert await store.list_run_ids_by_status("running") == ["r1"]
    assert await store.list_run_ids_by_status("pending") == []
    assert [r.id for r in await store.list_runs_by_workflow("wf-1")] == ["r1"]
    assert [r.id for r in await store.list_runs()] == ["r1"]
    assert await store.count_active_runs("org") == 1


async def test_a_run_created_finished_is_not_active(store: Store) -> None:
    run = started(status=RunStatus.SUCCEEDED)
    run.completed_at = T0
    await store.save_run_changes(run, creating(), rows())
    assert await store.list_run_ids_by_status("succeeded") == ["r1"]
    assert await store.count_active_runs("org") == 0


async def test_later_writes_change_the_created_run_as_any_other(store: Store) -> None:
    run = started()
    await store.save_run_changes(run, creating(), rows())
    run.steps["a"].status = StepStatus.SUCCEEDED
    run.status = RunStatus.SUCCEEDED
    await store.save_run_changes(run, RunChanges(header=True, steps={"a"},
                                                 previous_status=RunStatus.RUNNING),
                                 [TimelineEvent(type="run_status", status="succeeded")])
    assert (await store.get_run("r1")).to_dict() == run.to_dict()
    assert await store.list_run_ids_by_status("running") == []
    assert len(await store.list_timeline_events("r1")) == 3


async def test_a_creating_write_refuses_a_run_that_exists_and_writes_nothing(
        store: Store) -> None:
    existing = WorkflowRun(id="r1", workflow_id="wf-1", created_at=T0, updated_at=T0)
    await store.create_run(existing)
    with pytest.raises(InvalidStateError, match="r1"):
        await store.save_run_changes(started(), creating(), rows())
    assert (await store.get_run("r1")).to_dict() == existing.to_dict()
    assert await store.list_timeline_events("r1") == []
    assert await store.list_run_ids_by_status("running") == []


async def test_a_retried_creating_write_applies_once(store: Store) -> None:
    run = started()
    await store.save_run_changes(run, creating("t-1"), rows())
    # the same write again (its first try applied, its reply lost): done, nothing twice
    await store.save_run_changes(run, creating("t-1"), rows())
    assert len(await store.list_timeline_events("r1")) == 2
    # another write creating the same run: refused
    with pytest.raises(InvalidStateError):
        await store.save_run_changes(started(), creating("t-2"), rows())
    assert len(await store.list_timeline_events("r1")) == 2


async def test_a_creating_write_checks_the_run_as_create_run_does(store: Store) -> None:
    with pytest.raises(Exception, match="workflow id"):
        await store.save_run_changes(WorkflowRun(id="r1"), creating(), rows())
    with pytest.raises(NotFoundError):
        await store.get_run("r1")


async def test_a_fenced_creating_write_takes_the_lease_with_it(store: Store) -> None:
    assert isinstance(store, RunLeases)
    await store.save_run_changes(started(), creating(lease_owner="A", lease_ttl=TTL), rows())
    assert await store.lease_owner("r1") == "A"
    assert await store.unleased(["r1"]) == []
    # the lease taken is an ordinary one: renewed, fenced writes go through
    assert await store.renew_leases("A", ["r1"], TTL) == set()
    run = await store.get_run("r1")
    run.status = RunStatus.SUCCEEDED
    await store.save_run_changes(run, RunChanges(header=True, lease_owner="A",
                                                 previous_status=RunStatus.RUNNING))
    assert (await store.get_run("r1")).status == RunStatus.SUCCEEDED


async def test_a_creating_write_whose_lease_another_holds_writes_nothing(
        store: Store) -> None:
    assert isinstance(store, RunLeases)
    assert await store.acquire_lease("r1", "B", TTL)
    with pytest.raises(LeaseLostError, match="r1"):
        await store.save_run_changes(started(), creating(lease_owner="A", lease_ttl=TTL),
                                     rows())
    with pytest.raises(NotFoundError):
        await store.get_run("r1")
    assert await store.list_timeline_events("r1") == []
    assert await store.list_run_ids_by_status("running") == []
    assert await store.lease_owner("r1") == "B"
    # its own lease already (an earlier try of the write took it): created
    await store.release_lease("r1", "B")
    assert await store.acquire_lease("r1", "A", TTL)
    await store.save_run_changes(started(), creating(lease_owner="A", lease_ttl=TTL), rows())
    assert await store.lease_owner("r1") == "A"


async def test_a_creating_write_commits_the_job_inputs_it_carries(
        store: Store, payloads: PayloadStore) -> None:
    commits = getattr(store, "commits_payloads_of", None)
    if commits is None or not commits(payloads):
        pytest.skip("this store does not write job inputs with the run (PayloadCommit)")
    data = b'{"x": 1}'
    await store.save_run_changes(started(), creating(payloads={"ctx:r1:a:1": data}), rows())
    assert await payloads.get_context("ctx:r1:a:1") == data
    # refused: no input written either
    with pytest.raises(InvalidStateError):
        await store.save_run_changes(started(), creating("t-2", payloads={
            "ctx:r1:b:1": data}), rows())
    with pytest.raises(NotFoundError):
        await payloads.get_context("ctx:r1:b:1")
