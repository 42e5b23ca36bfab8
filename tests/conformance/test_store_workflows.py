"""The store port (API.md "Store", SPEC §11): the protocol and workflows,
run against every storage backend."""

from __future__ import annotations

from typing import Any

import pytest
from store_builders import workflow

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.ports import Store

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


async def test_a_lent_definition_reads_as_a_copy_does_and_a_save_leaves_it_alone(
    store: Store, wall_clock: Any
) -> None:
    """``ports.SharedWorkflows`` (stores in the engine's process): the stored definition
    itself, equal to what ``get_workflow`` copies out; saving again stores a new one."""
    shared = getattr(store, "get_workflow_shared", None)
    if shared is None:
        pytest.skip("this store copies every definition it hands out")
    await store.save_workflow(workflow(description="v1"))
    lent = await shared("wf-1")
    assert lent.to_dict() == (await store.get_workflow("wf-1")).to_dict()
    assert await shared("wf-1") is lent  # not a copy
    wall_clock.advance(60)
    await store.save_workflow(workflow(description="v2"))
    assert lent.description == "v1"
    assert (await shared("wf-1")).description == "v2"
    with pytest.raises(NotFoundError):
        await shared("nowhere")
