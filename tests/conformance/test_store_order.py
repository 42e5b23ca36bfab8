"""save_run_changes: children kept in index order; the timeline written in the same step."""

from __future__ import annotations

from cordtrio.model import StepRun, StepStatus, WorkflowRun
from cordtrio.ports import RunChanges, Store


async def test_children_created_in_one_change_come_back_in_index_order(store: Store) -> None:
    await store.create_run(WorkflowRun(id="run-1", workflow_id="wf"))
    r = await store.get_run("run-1")
    parent = StepRun(step_id="each", status=StepStatus.RUNNING)
    ids = [f"each[{i}]" for i in range(40)]
    parent.children = {cid: StepRun(step_id=cid, item=i) for i, cid in enumerate(ids)}
    r.steps["each"] = parent
    await store.save_run_changes(r, RunChanges(steps={"each"}, children={"each": set(ids)}))
    got = await store.get_run("run-1")
    assert list(got.steps["each"].children) == ids
    assert list(got.steps["each"].children.values())[7].item == 7


async def test_save_run_changes_writes_the_timeline_in_the_same_step(store: Store) -> None:
    from cordtrio.model import RunStatus, TimelineEvent

    await store.create_run(WorkflowRun(id="run-1", workflow_id="wf"))
    r = await store.get_run("run-1")
    r.status = RunStatus.RUNNING
    events = [TimelineEvent(type="run_status", status="running"),
              TimelineEvent(type="step_dispatched", step_id="a")]
    await store.save_run_changes(r, RunChanges(header=True, previous_status=RunStatus.PENDING),
                                 events)
    assert [e.type for e in await store.list_timeline_events("run-1")] == [
        "run_status", "step_dispatched"]
    assert (await store.get_run("run-1")).status == RunStatus.RUNNING
