"""The store port (API.md "Store", SPEC §11): runs, their status/org/workflow indexes
and listings, run against every storage backend."""

from __future__ import annotations

from typing import Any

import pytest
from store_builders import T0, at, big_run, run

from cordtrio.errors import InvalidStateError, NotFoundError, ValidationError
from cordtrio.model import (
    RunStatus,
    StepStatus,
    TimelineEvent,
    WorkflowRun,
)
from cordtrio.ports import RunChanges, Store

# -------------------------------------------------------------------------------- runs


async def test_created_run_reads_back_equal(store: Store) -> None:
    r = big_run()
    await store.create_run(r)
    got = await store.get_run("run-1")
    assert got.to_dict() == r.to_dict()
    assert list(got.steps["each"].children) == ["each[0]", "each[1]", "each[2]"]


async def test_create_run_fills_missing_timestamps_from_the_clock(
    store: Store, wall_clock: Any
) -> None:
    r = WorkflowRun(id="r", workflow_id="wf-1")
    await store.create_run(r)
    got = await store.get_run("r")
    assert got.created_at == wall_clock.now() == got.updated_at
    assert r.created_at == got.created_at and r.updated_at == got.updated_at
    assert got.status == RunStatus.PENDING


async def test_run_timestamps_given_by_the_caller_are_kept(store: Store) -> None:
    r = run(created=5, updated=7)
    await store.create_run(r)
    got = await store.get_run("run-1")
    assert (got.created_at, got.updated_at) == (at(5), at(7))
    r.updated_at = at(9)
    await store.update_run(r)
    assert (await store.get_run("run-1")).updated_at == at(9)


async def test_create_run_requires_ids_and_refuses_to_overwrite(store: Store) -> None:
    with pytest.raises(ValidationError):
        await store.create_run(WorkflowRun(id="", workflow_id="wf"))
    with pytest.raises(ValidationError):
        await store.create_run(WorkflowRun(id="r", workflow_id=""))
    await store.create_run(run("r"))
    with pytest.raises(InvalidStateError, match="'r'"):
        await store.create_run(run("r", status=RunStatus.RUNNING))
    assert (await store.get_run("r")).status == RunStatus.PENDING


async def test_missing_runs_raise_not_found_naming_the_id(store: Store) -> None:
    with pytest.raises(NotFoundError, match="run-x"):
        await store.get_run("run-x")
    with pytest.raises(NotFoundError, match="run-x"):
        await store.update_run(run("run-x"))
    with pytest.raises(NotFoundError, match="run-x"):
        await store.save_run_changes(run("run-x"), RunChanges(header=True))
    with pytest.raises(NotFoundError, match="run-x"):
        await store.delete_run("run-x")


async def test_runs_are_copied_in_and_out(store: Store) -> None:
    r = big_run()
    await store.create_run(r)
    r.steps["fetch"].status = StepStatus.FAILED
    r.steps["each"].children["each[0]"].item["i"] = 99
    r.context["steps"]["fetch"]["output"]["rows"].append(3)
    r.input["n"] = 0
    got = await store.get_run("run-1")
    assert got.steps["fetch"].status == StepStatus.SUCCEEDED
    assert got.steps["each"].children["each[0]"].item == {"i": 0}
    assert got.context["steps"]["fetch"]["output"]["rows"] == [1, 2]
    assert got.input == {"n": 3}

    got.steps.clear()
    got.context["report"]["title"] = "x"
    got.labels["team"] = "y"
    again = await store.get_run("run-1")
    assert set(again.steps) == {"fetch", "each"}
    assert again.context["report"] == {"title": "t"}
    assert again.labels == {"team": "x"}


async def test_update_run_rewrites_everything(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.status = RunStatus.RUNNING
    del r.steps["fetch"]
    r.steps["each"].children.pop("each[2]")
    r.steps["each"].children["each[0]"].status = StepStatus.RUNNING
    r.context = {"other": 1}
    await store.update_run(r)
    assert (await store.get_run("run-1")).to_dict() == r.to_dict()


async def test_status_index_holds_each_run_in_exactly_one_status(store: Store) -> None:
    await store.create_run(run("r1"))
    await store.create_run(run("r2"))
    assert sorted(await store.list_run_ids_by_status("pending")) == ["r1", "r2"]

    r1 = await store.get_run("r1")
    r1.status = RunStatus.RUNNING
    await store.update_run(r1)
    assert await store.list_run_ids_by_status("pending") == ["r2"]
    assert await store.list_run_ids_by_status(RunStatus.RUNNING) == ["r1"]

    r1.status = RunStatus.SUCCEEDED
    await store.save_run_changes(r1, RunChanges(header=True))
    assert await store.list_run_ids_by_status("running") == []
    assert await store.list_run_ids_by_status("succeeded") == ["r1"]
    for status in RunStatus:
        ids = await store.list_run_ids_by_status(status)
        assert ids.count("r1") == (1 if status == RunStatus.SUCCEEDED else 0)


async def test_status_index_lists_most_recently_updated_first_with_a_limit(
    store: Store,
) -> None:
    for i in range(5):
        await store.create_run(run(f"r{i}", created=i))
    assert await store.list_run_ids_by_status("pending") == ["r4", "r3", "r2", "r1", "r0"]
    assert await store.list_run_ids_by_status("pending", limit=2) == ["r4", "r3"]
    r1 = await store.get_run("r1")
    r1.updated_at = at(100)
    await store.update_run(r1)
    assert (await store.list_run_ids_by_status("pending", limit=1)) == ["r1"]
    assert await store.list_run_ids_by_status("no-such-status") == []


async def test_an_engine_step_in_the_same_status_moves_the_run_first_in_its_status(
    store: Store,
) -> None:
    for i in range(3):
        await store.create_run(run(f"r{i}", status=RunStatus.RUNNING, created=i))
    assert await store.list_run_ids_by_status("running") == ["r2", "r1", "r0"]
    r0 = await store.get_run("r0")
    r0.updated_at = at(100)
    await store.save_run_changes(
        r0, RunChanges(header=True, previous_status=RunStatus.RUNNING))
    assert await store.list_run_ids_by_status("running") == ["r0", "r2", "r1"]
    assert await store.list_run_ids_by_status("running", limit=1) == ["r0"]
    r1 = await store.get_run("r1")
    r1.updated_at = at(200)
    r1.status = RunStatus.SUCCEEDED
    await store.save_run_changes(
        r1, RunChanges(header=True, previous_status=RunStatus.RUNNING))
    assert await store.list_run_ids_by_status("running") == ["r0", "r2"]
    assert await store.list_run_ids_by_status("succeeded") == ["r1"]
    assert [r.id for r in await store.list_runs()] == ["r1", "r0", "r2"]


async def test_active_run_count_per_org_follows_status(store: Store) -> None:
    await store.create_run(run("a1", org_id="org-a"))
    await store.create_run(run("a2", org_id="org-a", status=RunStatus.WAITING))
    await store.create_run(run("a3", org_id="org-a", status=RunStatus.FAILED))
    await store.create_run(run("b1", org_id="org-b", status=RunStatus.RUNNING))
    assert await store.count_active_runs("org-a") == 2
    assert await store.count_active_runs("org-b") == 1
    assert await store.count_active_runs("org-c") == 0

    a1 = await store.get_run("a1")
    for status, active in [
        (RunStatus.RUNNING, 2),
        (RunStatus.CANCELLED, 1),
        (RunStatus.TIMED_OUT, 1),
        (RunStatus.SUCCEEDED, 1),
    ]:
        a1.status = status
        await store.save_run_changes(a1, RunChanges(header=True))
        assert await store.count_active_runs("org-a") == active, status
    await store.delete_run("a2")
    assert await store.count_active_runs("org-a") == 0


async def test_changing_a_runs_org_moves_its_active_entry(store: Store) -> None:
    await store.create_run(run("r", org_id="org-a", status=RunStatus.RUNNING))
    r = await store.get_run("r")
    r.org_id = "org-b"
    await store.update_run(r)
    assert await store.count_active_runs("org-a") == 0
    assert await store.count_active_runs("org-b") == 1


async def test_runs_by_workflow_are_listed_newest_created_first(store: Store) -> None:
    await store.create_run(run("r1", workflow_id="wf-1", created=1))
    await store.create_run(run("r2", workflow_id="wf-2", created=2))
    await store.create_run(run("r3", workflow_id="wf-1", created=3))
    await store.create_run(run("r4", workflow_id="wf-1", created=4))
    # an update does not reorder: the index is by creation time
    r1 = await store.get_run("r1")
    r1.updated_at = at(50)
    await store.update_run(r1)
    assert [r.id for r in await store.list_runs_by_workflow("wf-1")] == ["r4", "r3", "r1"]
    assert [r.id for r in await store.list_runs_by_workflow("wf-1", limit=2)] == ["r4", "r3"]
    assert [r.id for r in await store.list_runs_by_workflow("wf-2")] == ["r2"]
    assert await store.list_runs_by_workflow("wf-none") == []
    listed = (await store.list_runs_by_workflow("wf-2"))[0]
    assert listed.to_dict() == (await store.get_run("r2")).to_dict()


async def test_list_runs_is_newest_updated_first_with_an_exclusive_cursor(
    store: Store,
) -> None:
    base = int(T0.timestamp())
    for i, updated in enumerate([10, 30, 20, 40]):
        await store.create_run(run(f"r{i}", created=0, updated=updated))
    assert [r.id for r in await store.list_runs()] == ["r3", "r1", "r2", "r0"]
    assert [r.id for r in await store.list_runs(limit=2)] == ["r3", "r1"]
    # cursor: runs updated strictly before it, newest first
    assert [r.id for r in await store.list_runs(cursor_unix=base + 30)] == ["r2", "r0"]
    assert [r.id for r in await store.list_runs(cursor_unix=base + 31, limit=1)] == ["r1"]
    assert await store.list_runs(cursor_unix=base + 10) == []

    r0 = await store.get_run("r0")
    r0.updated_at = at(50)
    await store.save_run_changes(r0, RunChanges(header=True))
    assert [r.id for r in await store.list_runs(limit=1)] == ["r0"]


async def test_paging_list_runs_with_the_cursor_visits_every_run_once(store: Store) -> None:
    for i in range(7):
        await store.create_run(run(f"r{i}", created=0, updated=10 * i))
    seen: list[str] = []
    cursor = 0
    while True:
        page = await store.list_runs(cursor_unix=cursor, limit=3)
        if not page:
            break
        seen.extend(r.id for r in page)
        oldest = page[-1].updated_at
        assert oldest is not None
        cursor = int(oldest.timestamp())
    assert seen == [f"r{i}" for i in reversed(range(7))]


async def test_delete_run_removes_it_everywhere(store: Store) -> None:
    r = run("r", org_id="org-a", status=RunStatus.RUNNING, idempotency_key="k1")
    await store.create_run(r)
    await store.create_run(run("other"))
    await store.append_timeline_event("r", TimelineEvent(time=at(1), type="run_status"))
    await store.delete_run("r")
    with pytest.raises(NotFoundError):
        await store.get_run("r")
    assert [x.id for x in await store.list_runs()] == ["other"]
    assert [x.id for x in await store.list_runs_by_workflow("wf-1")] == ["other"]
    assert await store.list_run_ids_by_status("running") == []
    assert await store.count_active_runs("org-a") == 1  # only "other"
    assert await store.list_timeline_events("r") == []
    assert await store.get_run_by_idempotency_key("k1") is None


async def test_every_field_of_a_run_survives_create_and_save_changes(store: Store) -> None:
    r = big_run()
    r.team_id, r.triggered_by, r.total_cost, r.dry_run = "team-1", "api", 1.5, True
    r.started_at, r.completed_at = at(1), at(9)
    r.output, r.error = {"rows": [1, {"a": None}]}, {"message": "m", "code": 3}
    r.idempotency_key, r.rerun_of, r.rerun_step = "idem-1", "run-0", "fetch"
    r.steps["fetch"].input = {"q": "x", "n": [1.5, True, None]}
    r.steps["fetch"].error = {"message": "once"}
    r.steps["fetch"].next_attempt_at = at(3)
    r.steps["each"].children["each[1]"].output = {"deep": {"er": [[]]}}
    await store.create_run(r)
    got = await store.get_run("run-1")
    assert got == r
    assert got.to_dict() == r.to_dict()

    r.status, r.updated_at, r.output = RunStatus.SUCCEEDED, at(20), {"done": [True]}
    r.steps["each"].status = StepStatus.SUCCEEDED
    r.steps["each"].children["each[2]"].job_id = "run-1:each[2]@1"
    r.context["steps"]["each[2]"] = {"output": {"n": 2}}
    r.context["report"] = ["now", "a", "list"]
    changes = RunChanges(header=True, steps={"each"}, context_steps={"each[2]"},
                         context_keys={"report"})
    changes.touch_child("each", "each[2]")
    await store.save_run_changes(r, changes)
    got = await store.get_run("run-1")
    assert got == r
    assert got.to_dict() == r.to_dict()


async def test_saved_changes_are_copied_in_and_out(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.steps["fetch"].input = {"q": [1]}
    r.output = {"rows": [1]}
    r.context["steps"]["fetch"]["output"]["rows"] = [9]
    r.context["report"] = {"pages": [1]}
    r.steps["each"].children["each[0]"].item = {"i": [0]}
    changes = RunChanges(header=True, steps={"fetch"}, context_steps={"fetch"},
                         context_keys={"report"})
    changes.touch_child("each", "each[0]")
    await store.save_run_changes(r, changes)
    expected = r.to_dict()

    def mutate(x: WorkflowRun) -> None:
        x.steps["fetch"].input["q"].append(2)
        x.output["rows"].append(2)
        x.context["steps"]["fetch"]["output"]["rows"].append(2)
        x.context["report"]["pages"].append(2)
        x.steps["each"].children["each[0]"].item["i"].append(2)
        x.labels["team"] = "changed"

    mutate(r)  # what was passed in
    got = await store.get_run("run-1")
    assert got.to_dict() == expected
    mutate(got)  # what came back
    assert (await store.get_run("run-1")).to_dict() == expected
