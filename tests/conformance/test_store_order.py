"""Children come back in index order, however the changes named them."""

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
