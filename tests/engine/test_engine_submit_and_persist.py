"""Submitting and persisting: a re-submit starts a run that an interrupted submit created
but never started; a run's state changes and its timeline events are one write."""

from __future__ import annotations

import os
import uuid

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import open_engine
from cordtrio.engine.submission import random_run_id, uuid4_text
from cordtrio.model import RunStatus, StepStatus, Workflow, WorkflowRun
from cordtrio.ports import RunChanges


async def test_a_resubmit_starts_the_pending_run_an_interrupted_submit_left(
    autojump_clock: object,
) -> None:
    store, bus = MemoryStore(), MemoryBus()
    await store.save_workflow(Workflow.from_dict({"id": "wf", "steps": {"a": {"topic": "t"}}}))
    # what a submit that crashed after create_run leaves behind
    await store.create_run(WorkflowRun(id="r1", workflow_id="wf", idempotency_key="k"))
    assert await store.get_run_by_idempotency_key("k") == "r1"
    async with open_engine(store, bus, payloads=MemoryPayloadStore()) as engine:
        assert await engine.submit("wf", idempotency_key="k") == "r1"
        run = await store.get_run("r1")
    assert run.status == RunStatus.RUNNING
    assert run.steps["a"].status == StepStatus.RUNNING


async def test_run_changes_and_timeline_are_written_together(autojump_clock: object) -> None:
    store = MemoryStore()
    calls: list[str] = []
    original_append = store.append_timeline_events

    async def append(run_id: str, events: object) -> None:
        calls.append("append_timeline_events")
        await original_append(run_id, events)  # type: ignore[arg-type]

    store.append_timeline_events = append  # type: ignore[method-assign]
    await store.save_workflow(Workflow.from_dict({"id": "wf", "steps": {"a": {"topic": "t"}}}))
    async with open_engine(store, MemoryBus(), payloads=MemoryPayloadStore()) as engine:
        run_id = await engine.submit("wf")
    events = await store.list_timeline_events(run_id)
    assert [e.type for e in events] == ["run_status", "step_dispatched"]
    assert calls == []  # no separate timeline write that a crash could separate


async def test_save_run_changes_appends_the_timeline_it_is_given() -> None:
    from cordtrio.model import TimelineEvent

    store = MemoryStore()
    await store.create_run(WorkflowRun(id="r1", workflow_id="wf"))
    run = await store.get_run("r1")
    run.status = RunStatus.RUNNING
    await store.save_run_changes(run, RunChanges(header=True),
                                 [TimelineEvent(type="run_status", status="running")])
    assert [e.type for e in await store.list_timeline_events("r1")] == ["run_status"]
    assert (await store.get_run("r1")).status == RunStatus.RUNNING


def test_run_ids_are_uuid4_texts_as_the_uuid_module_writes_them() -> None:
    """``random_run_id`` writes the text of a version-4 UUID itself: for the same random
    bytes it is exactly what ``uuid`` gives (every value of the variant nibble included)."""
    samples = [os.urandom(16) for _ in range(2000)]
    samples += [bytes([0] * 8 + [k << 4] + [0xFF] * 7) for k in range(16)]
    for raw in samples:
        assert uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
    ids = {random_run_id() for _ in range(100)}
    assert len(ids) == 100
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == run_id
