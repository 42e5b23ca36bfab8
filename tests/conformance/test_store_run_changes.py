"""The store port (API.md "Store", SPEC §11): ``save_run_changes`` writes only the
named parts, run against every storage backend."""

from __future__ import annotations

import random

from store_builders import T0, at, big_run, run

from cordtrio.model import (
    RunStatus,
    StepRun,
    StepStatus,
    WorkflowRun,
)
from cordtrio.ports import RunChanges, Store

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
