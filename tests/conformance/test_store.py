"""The store port (API.md "Store", SPEC §11), run against every storage backend."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cordtrio.errors import InvalidStateError, NotFoundError, ValidationError
from cordtrio.model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    TimelineEvent,
    Workflow,
    WorkflowRun,
)
from cordtrio.ports import RunChanges, Store

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def workflow(wid: str = "wf-1", org_id: str = "org-a", **kw: Any) -> Workflow:
    steps = {
        "fetch": Step(id="fetch", topic="job.fetch"),
        "load": Step(id="load", topic="job.load", depends_on=["fetch"]),
    }
    return Workflow(id=wid, org_id=org_id, name=f"workflow {wid}", steps=steps, **kw)


def run(
    rid: str = "run-1",
    *,
    workflow_id: str = "wf-1",
    org_id: str = "org-a",
    status: RunStatus = RunStatus.PENDING,
    created: float = 0,
    updated: float | None = None,
    **kw: Any,
) -> WorkflowRun:
    return WorkflowRun(
        id=rid,
        workflow_id=workflow_id,
        org_id=org_id,
        status=status,
        created_at=at(created),
        updated_at=at(created if updated is None else updated),
        **kw,
    )


def big_run(rid: str = "run-1") -> WorkflowRun:
    """A run with plain steps, a for-each parent with children and a context."""
    r = run(rid, input={"n": 3}, labels={"team": "x"}, metadata={"k": "v"})
    r.steps["fetch"] = StepRun(step_id="fetch", status=StepStatus.SUCCEEDED, attempts=1,
                               job_id=f"{rid}:fetch@1", output="redis://res:a",
                               started_at=at(1), completed_at=at(2))
    parent = StepRun(step_id="each", status=StepStatus.RUNNING)
    for i in range(3):
        cid = f"each[{i}]"
        parent.children[cid] = StepRun(step_id=cid, status=StepStatus.PENDING, item={"i": i})
    r.steps["each"] = parent
    r.context = {
        "steps": {"fetch": {"result_ptr": "redis://res:a", "output": {"rows": [1, 2]}}},
        "report": {"title": "t"},
    }
    return r


# ------------------------------------------------------------------------------- ports


async def test_backend_implements_the_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)


# --------------------------------------------------------------------------- workflows


async def test_saved_workflow_reads_back_equal(store: Store) -> None:
    wf = workflow(description="d", input_schema={"type": "object"}, config={"a": 1})
    await store.save_workflow(wf)
    got = await store.get_workflow("wf-1")
    assert got.to_dict() == wf.to_dict()
    assert list(got.steps) == ["fetch", "load"]  # definition order survives


async def test_save_workflow_sets_created_on_first_save_and_updated_on_every_save(
    store: Store, wall_clock: Any
) -> None:
    wf = workflow()
    await store.save_workflow(wf)
    first = await store.get_workflow("wf-1")
    assert first.created_at == wall_clock.now() == first.updated_at
    assert wf.created_at == first.created_at  # filled on the object passed in as well

    wall_clock.advance(60)
    again = workflow(description="v2")  # a fresh object without timestamps
    await store.save_workflow(again)
    second = await store.get_workflow("wf-1")
    assert second.created_at == first.created_at
    assert second.updated_at == wall_clock.now()
    assert second.description == "v2"


async def test_save_workflow_rejects_an_invalid_definition_and_stores_nothing(
    store: Store,
) -> None:
    wf = workflow()
    wf.steps["load"].depends_on = ["nowhere"]
    with pytest.raises(ValidationError, match="nowhere"):
        await store.save_workflow(wf)
    with pytest.raises(NotFoundError):
        await store.get_workflow("wf-1")
    assert await store.list_workflows() == []


async def test_get_and_delete_of_a_missing_workflow_name_the_id(store: Store) -> None:
    with pytest.raises(NotFoundError, match="wf-missing"):
        await store.get_workflow("wf-missing")
    with pytest.raises(NotFoundError, match="wf-missing"):
        await store.delete_workflow("wf-missing")


async def test_list_workflows_newest_first_by_org_and_globally(
    store: Store, wall_clock: Any
) -> None:
    for wid, org in [("w1", "org-a"), ("w2", "org-b"), ("w3", "org-a"), ("w4", "")]:
        await store.save_workflow(workflow(wid, org))
        wall_clock.advance(1)
    assert [w.id for w in await store.list_workflows()] == ["w4", "w3", "w2", "w1"]
    assert [w.id for w in await store.list_workflows("org-a")] == ["w3", "w1"]
    assert [w.id for w in await store.list_workflows("org-b")] == ["w2"]
    assert await store.list_workflows("org-none") == []
    assert [w.id for w in await store.list_workflows(limit=2)] == ["w4", "w3"]
    assert len(await store.list_workflows(limit=0)) == 4  # <= 0 means the default

    await store.save_workflow(workflow("w1", "org-a"))  # re-saving makes it the newest
    assert [w.id for w in await store.list_workflows("org-a")] == ["w1", "w3"]


async def test_resaving_a_workflow_under_another_org_moves_it(store: Store) -> None:
    await store.save_workflow(workflow("w1", "org-a"))
    await store.save_workflow(workflow("w1", "org-b"))
    assert await store.list_workflows("org-a") == []
    assert [w.id for w in await store.list_workflows("org-b")] == ["w1"]
    assert [w.id for w in await store.list_workflows()] == ["w1"]


async def test_delete_workflow_removes_it_from_every_index(store: Store) -> None:
    await store.save_workflow(workflow("w1", "org-a"))
    await store.save_workflow(workflow("w2", "org-a"))
    await store.delete_workflow("w1")
    with pytest.raises(NotFoundError):
        await store.get_workflow("w1")
    assert [w.id for w in await store.list_workflows()] == ["w2"]
    assert [w.id for w in await store.list_workflows("org-a")] == ["w2"]


async def test_workflows_are_copied_in_and_out(store: Store) -> None:
    wf = workflow()
    await store.save_workflow(wf)
    wf.steps["fetch"].topic = "changed"
    wf.steps["load"].depends_on.append("x")
    wf.name = "changed"
    got = await store.get_workflow("wf-1")
    assert got.steps["fetch"].topic == "job.fetch"
    assert got.steps["load"].depends_on == ["fetch"]
    got.steps["fetch"].input["k"] = "v"
    del got.steps["load"]
    again = await store.get_workflow("wf-1")
    assert again.steps["fetch"].input == {}
    assert list(again.steps) == ["fetch", "load"]
    assert again.name == "workflow wf-1"


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


# ------------------------------------------------------------------- save_run_changes


async def test_save_run_changes_writes_only_the_named_steps(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.steps["fetch"].status = StepStatus.FAILED
    r.steps["each"].status = StepStatus.SUCCEEDED
    r.status = RunStatus.FAILED  # header changed too, but not named
    await store.save_run_changes(r, RunChanges(steps={"fetch"}))
    got = await store.get_run("run-1")
    assert got.steps["fetch"].status == StepStatus.FAILED
    assert got.steps["each"].status == StepStatus.RUNNING
    assert got.status == RunStatus.PENDING
    assert await store.list_run_ids_by_status("pending") == ["run-1"]


async def test_naming_a_parent_step_does_not_rewrite_its_children(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.steps["each"].status = StepStatus.SUCCEEDED
    r.steps["each"].children["each[1]"].status = StepStatus.SUCCEEDED
    await store.save_run_changes(r, RunChanges(steps={"each"}))
    got = await store.get_run("run-1")
    assert got.steps["each"].status == StepStatus.SUCCEEDED
    assert got.steps["each"].children["each[1]"].status == StepStatus.PENDING
    assert len(got.steps["each"].children) == 3


async def test_save_run_changes_writes_only_the_named_children(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    for cid in ("each[0]", "each[1]"):
        r.steps["each"].children[cid].status = StepStatus.RUNNING
        r.steps["each"].children[cid].job_id = f"run-1:{cid}@1"
    changes = RunChanges()
    changes.touch_child("each", "each[1]")
    await store.save_run_changes(r, changes)
    kids = (await store.get_run("run-1")).steps["each"].children
    assert kids["each[0]"].status == StepStatus.PENDING
    assert kids["each[1]"].status == StepStatus.RUNNING
    assert kids["each[1]"].job_id == "run-1:each[1]@1"
    assert kids["each[2]"].status == StepStatus.PENDING


async def test_new_steps_and_children_can_be_added_by_changes(store: Store) -> None:
    await store.create_run(run())
    r = await store.get_run("run-1")
    parent = StepRun(step_id="each", status=StepStatus.RUNNING)
    parent.children = {f"each[{i}]": StepRun(step_id=f"each[{i}]", item=i) for i in range(2)}
    r.steps["each"] = parent
    r.steps["solo"] = StepRun(step_id="solo", status=StepStatus.WAITING)
    await store.save_run_changes(
        r, RunChanges(steps={"each", "solo"}, children={"each": {"each[0]", "each[1]"}})
    )
    assert (await store.get_run("run-1")).to_dict() == r.to_dict()


async def test_named_parts_missing_from_the_run_are_deleted(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    del r.steps["fetch"]
    del r.steps["each"].children["each[2]"]
    del r.context["steps"]["fetch"]
    del r.context["report"]
    await store.save_run_changes(
        r,
        RunChanges(
            steps={"fetch"},
            children={"each": {"each[2]"}},
            context_steps={"fetch"},
            context_keys={"report"},
        ),
    )
    got = await store.get_run("run-1")
    assert got.to_dict() == r.to_dict()
    assert "fetch" not in got.steps
    assert list(got.steps["each"].children) == ["each[0]", "each[1]"]
    assert got.context == {"steps": {}}


async def test_deleting_a_parent_step_deletes_its_children(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    del r.steps["each"]
    await store.save_run_changes(r, RunChanges(steps={"each"}))
    got = await store.get_run("run-1")
    assert "each" not in got.steps
    r.steps["each"] = StepRun(step_id="each")  # re-created later: no stale children
    await store.save_run_changes(r, RunChanges(steps={"each"}))
    assert (await store.get_run("run-1")).steps["each"].children == {}


async def test_save_run_changes_writes_only_the_named_context_entries(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.context["steps"]["fetch"]["output"] = "changed"
    r.context["steps"]["each[0]"] = {"result_ptr": "redis://res:c0", "output": 1}
    r.context["steps"]["each[1]"] = {"result_ptr": "redis://res:c1", "output": 2}
    r.context["report"]["title"] = "changed"
    r.context["summary"] = {"ok": True}
    await store.save_run_changes(
        r, RunChanges(context_steps={"each[0]"}, context_keys={"summary"})
    )
    ctx = (await store.get_run("run-1")).context
    assert ctx["steps"] == {
        "fetch": {"result_ptr": "redis://res:a", "output": {"rows": [1, 2]}},
        "each[0]": {"result_ptr": "redis://res:c0", "output": 1},
    }
    assert ctx["report"] == {"title": "t"}
    assert ctx["summary"] == {"ok": True}


async def test_context_steps_can_start_from_an_empty_context(store: Store) -> None:
    await store.create_run(run())
    r = await store.get_run("run-1")
    r.context["steps"] = {"a": {"output": 1}}
    await store.save_run_changes(r, RunChanges(context_steps={"a"}))
    assert (await store.get_run("run-1")).context == {"steps": {"a": {"output": 1}}}


async def test_naming_steps_as_a_context_key_rewrites_the_whole_map(store: Store) -> None:
    await store.create_run(big_run())
    r = await store.get_run("run-1")
    r.context["steps"] = {"only": {"output": 1}}
    await store.save_run_changes(r, RunChanges(context_keys={"steps"}))
    assert (await store.get_run("run-1")).context["steps"] == {"only": {"output": 1}}


async def test_save_run_changes_header_moves_the_indexes(store: Store) -> None:
    await store.create_run(run(org_id="org-a", created=0))
    r = await store.get_run("run-1")
    r.status = RunStatus.SUCCEEDED
    r.completed_at = at(20)
    r.updated_at = at(20)
    r.output = {"ok": True}
    await store.save_run_changes(r, RunChanges(header=True, previous_status=RunStatus.PENDING))
    got = await store.get_run("run-1")
    assert got.to_dict() == r.to_dict()
    assert await store.list_run_ids_by_status("pending") == []
    assert await store.list_run_ids_by_status("succeeded") == ["run-1"]
    assert await store.count_active_runs("org-a") == 0
    base = int(T0.timestamp())
    assert await store.list_runs(cursor_unix=base + 20) == []
    assert [x.id for x in await store.list_runs(cursor_unix=base + 21)] == ["run-1"]


async def test_changes_without_header_leave_the_indexes_alone(store: Store) -> None:
    await store.create_run(run(org_id="org-a"))
    r = await store.get_run("run-1")
    r.status = RunStatus.SUCCEEDED
    r.steps["s"] = StepRun(step_id="s", status=StepStatus.SUCCEEDED)
    await store.save_run_changes(r, RunChanges(steps={"s"}))
    assert await store.list_run_ids_by_status("pending") == ["run-1"]
    assert await store.count_active_runs("org-a") == 1


async def test_empty_changes_change_nothing(store: Store) -> None:
    original = big_run()
    await store.create_run(original)
    r = await store.get_run("run-1")
    r.status = RunStatus.RUNNING
    r.steps.clear()
    r.context.clear()
    await store.save_run_changes(r, RunChanges())
    assert (await store.get_run("run-1")).to_dict() == original.to_dict()


async def test_random_changes_named_in_full_keep_store_and_memory_equal(store: Store) -> None:
    """Whatever sequence of edits, naming what changed makes the stored run equal the
    caller's — the contract the engine relies on for O(change) persistence."""
    rng = random.Random(1234)
    r = big_run()
    await store.create_run(r)
    statuses = list(StepStatus)
    for _ in range(300):
        changes = RunChanges()
        for _ in range(rng.randint(1, 4)):
            _random_edit(rng, r, changes, statuses)
        await store.save_run_changes(r, changes)
        assert (await store.get_run(r.id)).to_dict() == r.to_dict()


def _random_edit(
    rng: random.Random, r: WorkflowRun, changes: RunChanges, statuses: list[StepStatus]
) -> None:
    kind = rng.choice(["step", "new_step", "del_step", "child", "del_child", "ctx_step",
                       "ctx_key", "header"])
    sid = rng.choice(["a", "b", "each", "fan"])
    if kind in ("step", "new_step"):
        sr = r.steps.setdefault(sid, StepRun(step_id=sid))
        sr.status = rng.choice(statuses)
        sr.attempts += 1
        sr.output = {"v": rng.random()} if rng.random() < 0.5 else None
        changes.steps.add(sid)
    elif kind == "del_step" and sid in r.steps:
        for cid in r.steps.pop(sid).children:  # its children go too: they changed
            changes.touch_child(sid, cid)
        changes.steps.add(sid)
    elif kind == "child":
        parent = r.steps.get(sid)
        if parent is None:
            parent = r.steps[sid] = StepRun(step_id=sid)
            changes.steps.add(sid)
        cid = f"{sid}[{rng.randint(0, 5)}]"
        child = parent.children.setdefault(cid, StepRun(step_id=cid, item=cid))
        child.status = rng.choice(statuses)
        changes.touch_child(sid, cid)
    elif kind == "del_child" and sid in r.steps and r.steps[sid].children:
        cid = rng.choice(list(r.steps[sid].children))
        del r.steps[sid].children[cid]
        changes.touch_child(sid, cid)
    elif kind == "ctx_step":
        ctx_steps = r.context.setdefault("steps", {})
        key = rng.choice(["a", "b", "fetch", "each[1]"])
        if key in ctx_steps and rng.random() < 0.3:
            del ctx_steps[key]
        else:
            ctx_steps[key] = {"output": [rng.random()]}
        changes.context_steps.add(key)
    elif kind == "ctx_key":
        key = rng.choice(["report", "x", "y"])
        if key in r.context and rng.random() < 0.3:
            del r.context[key]
        else:
            r.context[key] = {"n": rng.randint(0, 9)}
        changes.context_keys.add(key)
    elif kind == "header":
        r.status = rng.choice(list(RunStatus))
        r.updated_at = at(rng.randint(0, 1000))
        r.output = {"n": rng.randint(0, 9)}
        changes.header = True


# ------------------------------------------------------------------------------ timeline


def event(n: int, **kw: Any) -> TimelineEvent:
    return TimelineEvent(time=at(n), type="step_dispatched", run_id="run-1",
                         step_id=f"s{n}", data={"n": n}, **kw)


async def test_timeline_is_chronological_and_round_trips(store: Store) -> None:
    events = [event(i, message=f"m{i}") for i in range(5)]
    for e in events[:2]:
        await store.append_timeline_event("run-1", e)
    await store.append_timeline_events("run-1", events[2:])
    got = await store.list_timeline_events("run-1")
    assert [e.to_dict() for e in got] == [e.to_dict() for e in events]


async def test_timeline_limit_returns_the_newest_events_oldest_first(store: Store) -> None:
    await store.append_timeline_events("run-1", [event(i) for i in range(10)])
    got = await store.list_timeline_events("run-1", limit=3)
    assert [e.step_id for e in got] == ["s7", "s8", "s9"]
    assert len(await store.list_timeline_events("run-1", limit=0)) == 10  # default 100


async def test_timeline_keeps_only_the_newest_1000_entries(store: Store) -> None:
    await store.append_timeline_events("run-1", [event(i) for i in range(600)])
    for i in range(600, 1005):
        await store.append_timeline_event("run-1", event(i))
    got = await store.list_timeline_events("run-1", limit=5000)
    assert len(got) == 1000
    assert got[0].step_id == "s5" and got[-1].step_id == "s1004"
    assert [e.data["n"] for e in got] == list(range(5, 1005))


async def test_timeline_fills_run_id_and_time_and_copies_events(
    store: Store, wall_clock: Any
) -> None:
    e = TimelineEvent(type="run_status", status="running", data={"k": [1]})
    await store.append_timeline_event("run-9", e)
    e.data["k"].append(2)
    (got,) = await store.list_timeline_events("run-9")
    assert got.run_id == "run-9"
    assert got.time == wall_clock.now()
    assert got.data == {"k": [1]}
    got.data["k"].append(3)
    assert (await store.list_timeline_events("run-9"))[0].data == {"k": [1]}


async def test_timelines_are_per_run(store: Store) -> None:
    await store.append_timeline_event("run-1", event(1))
    await store.append_timeline_event("run-2", event(2))
    assert [e.step_id for e in await store.list_timeline_events("run-1")] == ["s1"]
    assert await store.list_timeline_events("run-unknown") == []


# --------------------------------------------------------------------------- idempotency


async def test_idempotency_keys_are_set_if_absent(store: Store) -> None:
    assert await store.get_run_by_idempotency_key("k") is None
    assert await store.try_set_run_idempotency_key("k", "run-1") is True
    assert await store.try_set_run_idempotency_key("k", "run-2") is False
    assert await store.get_run_by_idempotency_key("k") == "run-1"
    await store.delete_run_idempotency_key("k")
    assert await store.get_run_by_idempotency_key("k") is None
    assert await store.try_set_run_idempotency_key("k", "run-2") is True
    assert await store.get_run_by_idempotency_key("k") == "run-2"
    await store.delete_run_idempotency_key("never-set")  # not an error


async def test_idempotency_key_needs_a_key_and_a_run(store: Store) -> None:
    with pytest.raises(ValidationError):
        await store.try_set_run_idempotency_key("", "run-1")
    with pytest.raises(ValidationError):
        await store.try_set_run_idempotency_key("k", "")


async def test_create_run_claims_its_idempotency_key_if_free(store: Store) -> None:
    await store.create_run(run("r1", idempotency_key="k1"))
    assert await store.get_run_by_idempotency_key("k1") == "r1"
    await store.create_run(run("r2", idempotency_key="k1"))  # taken: left alone
    assert await store.get_run_by_idempotency_key("k1") == "r1"
    await store.delete_run("r2")  # does not release a key it never held
    assert await store.get_run_by_idempotency_key("k1") == "r1"
