"""``MemoryStore``'s short ways to a snapshot give what its general ways give
(``backends/memory/frozen.py``, ``run_record.py``).

A plain step or run header is kept as its fields read in one C call (``freeze_step``,
``freeze_header``), any other as the general row; one job's output is written to the
``context["steps"]`` map without ``write_context_steps``. Each case below goes both ways and
must read back the same (and, for JSON-shaped values, what a document round trip gives).
(Memory only: the rows are this store's own.)
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import pytest

from cordtrio.backends.memory.frozen import (
    _freeze_header_fully,
    _freeze_step_fully,
    freeze_header,
    freeze_step,
    thaw_header,
    thaw_step,
)
from cordtrio.backends.memory.run_record import RunRecord
from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun
from cordtrio.ports import RunChanges, child_order_key

T1 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
T2 = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)


def _steps() -> list[tuple[StepRun, bool]]:
    """(step, whether it is JSON-shaped: a document round trip keeps it)."""
    text_status = StepRun(step_id="t", job_id="j")
    text_status.status = "running"  # type: ignore[assignment]
    no_status = StepRun(step_id="n")
    no_status.status = None  # type: ignore[assignment]
    other_enum = StepRun(step_id="o")
    other_enum.status = RunStatus.CANCELLED  # type: ignore[assignment]
    return [
        (StepRun(step_id="a", status=StepStatus.RUNNING, started_at=T1, attempts=1,
                 job_id="r:a@1"), True),
        (StepRun(step_id="a", status=StepStatus.SUCCEEDED, started_at=T1, completed_at=T2,
                 attempts=1, job_id="r:a@1", output="redis://res:r:a@1"), True),
        (StepRun(step_id="", status=StepStatus.PENDING, item="x"), True),  # id from its key
        (StepRun(step_id="b", status=StepStatus.WAITING, next_attempt_at=T2), True),
        (StepRun(step_id="c", input={"k": [1, {"v": None}]}, item={"i": 1}), True),
        (StepRun(step_id="d", status=StepStatus.FAILED, error={"message": "boom"},
                 output={"o": [1]}), True),
        (StepRun(step_id="e", output=3, item=[1, 2]), True),
        (StepRun(step_id="f", output=True, item=0.5), True),
        (StepRun(step_id="g", output=StepStatus.FAILED), False),  # a str subclass
        (StepRun(step_id="h", input=OrderedDict(a=1), output=b"raw"), False),
        (StepRun(step_id="i", input=OrderedDict(), error=OrderedDict()), False),
        (text_status, False), (no_status, False), (other_enum, False),
    ]


def _headers() -> list[WorkflowRun]:
    text_status = WorkflowRun(id="r2", workflow_id="wf")
    text_status.status = "waiting"  # type: ignore[assignment]
    no_maps = WorkflowRun(id="r3", workflow_id="wf")
    no_maps.output = None  # type: ignore[assignment]
    return [
        WorkflowRun(id="r", workflow_id="wf", status=RunStatus.RUNNING, started_at=T1,
                    created_at=T1, updated_at=T2),
        WorkflowRun(id="r", workflow_id="wf", org_id="o", team_id="t", total_cost=1.5,
                    triggered_by="api", idempotency_key="k", rerun_of="q", rerun_step="s",
                    dry_run=True, status=RunStatus.SUCCEEDED, completed_at=T2,
                    output={"x": [1]}, created_at=T1, updated_at=T2),
        WorkflowRun(id="r", workflow_id="wf", error={"message": "no"}, labels={"a": "b"},
                    metadata={"m": "n"}, status=RunStatus.FAILED),
        WorkflowRun(id="r", workflow_id="wf", labels=OrderedDict(z="1")),
        text_status, no_maps,
    ]


@pytest.mark.parametrize("case", range(len(_steps())))
def test_a_step_reads_back_the_same_whichever_row_keeps_it(case: int) -> None:
    step, json_shaped = _steps()[case]
    short, general = freeze_step(step), _freeze_step_fully(step)
    got = thaw_step(short, "key")
    assert got == thaw_step(general, "key")
    assert got is not step and got.step_id == (step.step_id or "key")
    if json_shaped:
        assert got == StepRun.from_dict(step.to_dict(with_children=False), "key")
    if step.input:  # nothing is shared with the step written
        step.input["later"] = 1
        assert "later" not in thaw_step(short, "key").input


@pytest.mark.parametrize("case", range(len(_headers())))
def test_a_header_reads_back_the_same_whichever_row_keeps_it(case: int) -> None:
    run = _headers()[case]
    got = thaw_header(freeze_header(run), None)
    assert got == thaw_header(_freeze_header_fully(run), None)
    if isinstance(run.status, RunStatus) and run.output is not None:
        expected = WorkflowRun.from_dict(run.to_dict())
        expected.steps, expected.context, expected.input = {}, {}, {}
        assert got == expected


def test_plain_rows_hold_nothing_the_collector_tracks() -> None:
    """An engine's step and header are kept as rows of strings, datetimes and numbers:
    untracked by the cyclic GC once it has seen them (see frozen.py)."""
    rows: list[Any] = [freeze_step(step) for step, _ in _steps()[:4]]
    rows.append(freeze_header(_headers()[0]))
    gc.collect()
    assert not any(gc.is_tracked(row) for row in rows)


def _context_cases() -> list[tuple[dict[str, Any], set[str]]]:
    """(the run's context, the context_steps named) for one write."""
    return [
        ({"steps": {"a": {"output": 1}}}, {"a"}),  # the common case
        ({"steps": {"a": {"output": 1}}}, {"b"}),  # named, not in the map: deleted
        ({"steps": {"a": {"o": 1}, "b": {"o": 2}, "c": {"o": 3}}}, {"c", "a", "b"}),
        ({"steps": {"a": {"o": OrderedDict(x=1)}}}, {"a"}),  # no marshal
        ({"steps": OrderedDict(a={"o": 1})}, {"a"}),  # a dict subclass
        ({"steps": [1, 2]}, {"a"}),  # no map
        ({}, {"a"}),
        ({"other": 1}, {"a"}),
    ]


@pytest.mark.parametrize("case", range(len(_context_cases())))
@pytest.mark.parametrize("stored", [None, {"a": {"output": 0}, "z": {"output": 9}}])
def test_one_output_written_the_short_way_reads_back_as_the_general_way(
        case: int, stored: dict[str, Any] | None) -> None:
    context, names = _context_cases()[case]
    records = []
    for short in (True, False):
        start = WorkflowRun(id="r", workflow_id="wf", context={} if stored is None else
                            {"steps": dict(stored), "k": 1})
        record = RunRecord.of(start)
        run = WorkflowRun(id="r", workflow_id="wf", context=context)
        if short:
            record.write_changes(run, RunChanges(context_steps=set(names)))
        else:
            record.write_context_steps(run, sorted(names, key=child_order_key))
        records.append(record.assemble())
    assert records[0] == records[1]
    assert list(records[0].context.get("steps", {})) == list(
        records[1].context.get("steps", {}))


async def test_a_runs_timeline_is_one_list_whichever_way_events_come() -> None:
    """The engine's writes append to the list the record holds, the other appends to the
    one the timelines keep: the same list, until the run is deleted with it."""
    from cordtrio.backends.memory import MemoryStore
    from cordtrio.model import TimelineEvent

    def event(n: int) -> TimelineEvent:
        return TimelineEvent(T1, f"e{n}", "r")

    store = MemoryStore()
    await store.append_timeline_event("r", event(0))  # before the run exists
    for again in (False, True):
        run = WorkflowRun(id="r", workflow_id="wf", created_at=T1)
        await store.create_run(run)
        store.save_run_changes_now(run, RunChanges(header=True), [event(1)])
        await store.append_timeline_events("r", [event(2)])
        store.save_run_changes_now(run, RunChanges(), [event(3), event(4)])
        got = [e.type for e in await store.list_timeline_events("r")]
        assert got == ([] if again else ["e0"]) + ["e1", "e2", "e3", "e4"]
        await store.delete_run("r")
        assert await store.list_timeline_events("r") == []


async def test_the_shared_empty_data_of_kept_events_never_reaches_a_reader() -> None:
    """Events without data are kept with the shared read-only ``NO_DATA`` (the engine's
    handed over so, any other's copied so); every read gets a fresh map of its own, which
    its reader may change without changing what is stored or ``NO_DATA``."""
    from cordtrio.backends.memory import MemoryStore
    from cordtrio.model import NO_DATA, TimelineEvent

    store = MemoryStore()
    run = WorkflowRun(id="r", workflow_id="wf", created_at=T1)
    await store.create_run(run)
    store.save_run_changes_now(run, RunChanges(), [TimelineEvent(T1, "now", "r", data=NO_DATA)])
    await store.save_run_changes(run, RunChanges(), [TimelineEvent(T1, "saved", "r")])
    await store.append_timeline_events("r", [TimelineEvent(T1, "appended", "r")])
    kept = store._timelines.kept("r")
    assert [e.data for e in kept] == [NO_DATA] * 3
    assert all(e.data is NO_DATA for e in kept)
    for _ in range(2):
        got = await store.list_timeline_events("r")
        assert [e.type for e in got] == ["now", "saved", "appended"]
        for e in got:
            assert type(e.data) is dict and e.data == {}
            e.data["x"] = 1
    assert len(NO_DATA) == 0
