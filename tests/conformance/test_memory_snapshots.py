"""``MemoryStore`` keeps run parts as immutable snapshots (``backends/memory/frozen.py``):
values ``marshal`` cannot encode take the copying path and behave the same. (Memory only:
these values are not JSON, which the other stores require.)"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta, timezone

import pytest
from store_builders import at, big_run

from cordtrio.backends.memory import MemoryStore
from cordtrio.model import NO_DATA, RunStatus, StepRun, StepStatus, TimelineEvent
from cordtrio.ports import RunChanges


class Opaque:
    """A value no serialiser knows: kept by deep copy."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


async def test_values_marshal_refuses_are_copied_in_and_out() -> None:
    store = MemoryStore()
    r = big_run()
    r.input["ordered"] = OrderedDict(a=[1])
    r.output = {"status": StepStatus.FAILED, "obj": Opaque(1)}
    r.steps["fetch"].item = Opaque(2)
    r.steps["each"].children["each[0]"].output = {"tuple": (1, [2])}
    r.context["report"] = OrderedDict(title=[1])
    await store.create_run(r)
    expected = big_run()
    expected.input["ordered"] = OrderedDict(a=[1])
    expected.output = {"status": StepStatus.FAILED, "obj": Opaque(1)}
    expected.steps["fetch"].item = Opaque(2)
    expected.steps["each"].children["each[0]"].output = {"tuple": (1, [2])}
    expected.context["report"] = OrderedDict(title=[1])

    r.input["ordered"]["a"].append(2)
    r.output["obj"].n = 9
    r.steps["fetch"].item.n = 9
    r.steps["each"].children["each[0]"].output["tuple"][1].append(3)
    r.context["report"]["title"].append(2)
    got = await store.get_run("run-1")
    assert got == expected
    assert type(got.input["ordered"]) is OrderedDict
    assert got.output["status"] is StepStatus.FAILED

    got.output["obj"].n = 7
    got.steps["fetch"].item.n = 7
    assert await store.get_run("run-1") == expected

    got.status = expected.status  # a header write copies the odd values again
    got.output = {"obj": Opaque(3)}
    await store.save_run_changes(got, RunChanges(header=True))
    got.output["obj"].n = 4
    assert (await store.get_run("run-1")).output == {"obj": Opaque(3)}


async def test_a_child_with_children_of_its_own_keeps_them() -> None:
    store = MemoryStore()
    r = big_run()
    grandchild = StepRun(step_id="g", status=StepStatus.RUNNING, item={"k": [1]})
    r.steps["each"].children["each[0]"].children["g"] = grandchild
    await store.create_run(r)
    grandchild.item["k"].append(2)
    got = await store.get_run("run-1")
    assert got.steps["each"].children["each[0]"].children["g"].item == {"k": [1]}
    assert got.to_dict()["steps"]["each"]["children"]["each[0]"]["children"]["g"] == {
        "step_id": "g", "status": "running", "item": {"k": [1]}}


async def test_steps_added_in_one_change_keep_the_runs_order() -> None:
    """New steps are stored in the run's own order (not the change set's), after the kept
    ones, whose places a rewrite does not move; a named step the run lacks is deleted."""
    for now in (False, True):
        store = MemoryStore()
        r = big_run()
        await store.create_run(r)
        kept = list(r.steps)
        del r.steps[kept[0]]
        r.steps[kept[-1]].status = StepStatus.FAILED
        fresh = [f"new{i}" for i in (7, 1, 9, 3, 5, 0)]
        for sid in fresh:
            r.steps[sid] = StepRun(step_id=sid, status=StepStatus.RUNNING)
        changes = RunChanges(steps={kept[0], kept[-1], *fresh})
        if now:
            store.save_run_changes_now(r, changes)
        else:
            await store.save_run_changes(r, changes)
        got = await store.get_run("run-1")
        assert list(got.steps) == kept[1:] + fresh
        assert got.steps[kept[-1]].status == StepStatus.FAILED


def _odd_events() -> list[TimelineEvent]:
    plus2 = timezone(timedelta(hours=2))
    return [
        TimelineEvent(at(1), "step_dispatched", "run-1", "wf", "s", "run-1:s@1", "running",
                      "", "", {"context_ptr": "redis://ctx:run-1:s@1"}),
        TimelineEvent(type="run_status", status="running"),  # no time, no run id, no data
        TimelineEvent(at(2).astimezone(plus2), RunStatus.FAILED, "", StepStatus.RUNNING,
                      step_id="s", status=StepStatus.SUCCEEDED, message=RunStatus.WAITING,
                      data={"rows": [1, {"a": None}], "t": (1, 2)}),
        TimelineEvent(at(3).replace(tzinfo=None), "step_completed", "run-1",
                      result_ptr="redis://res:run-1:s@1", data={}),
    ]


async def test_events_handed_over_read_back_as_copied_ones_do() -> None:
    """``save_run_changes_now`` keeps the engine's events as they are; any other append
    keeps copies: both read back the same, as fresh events a caller may change."""

    class Clock:
        def now(self) -> datetime:
            return at(9)

    copied, kept = MemoryStore(clock=Clock()), MemoryStore(clock=Clock())
    for store in (copied, kept):
        await store.create_run(big_run())
    events = _odd_events()
    await copied.append_timeline_events("run-1", events)
    for e in events:  # the caller's events changed afterwards: nothing stored changes
        e.data["x"] = 1
    kept.save_run_changes_now(await kept.get_run("run-1"), RunChanges(), _odd_events())
    got = await copied.list_timeline_events("run-1")
    assert got == await kept.list_timeline_events("run-1")
    assert got[0] == TimelineEvent.from_dict(_odd_events()[0].to_dict())
    assert got[1].time == at(9) and got[1].run_id == "run-1" and got[1].data == {}
    assert got[2].time == at(2) and got[2].time.utcoffset() == timedelta(0)
    assert (got[2].type, got[2].run_id, got[2].status) == ("failed", "run-1", "succeeded")
    for store in (copied, kept):
        mine = await store.list_timeline_events("run-1")
        mine[0].data["context_ptr"] = "changed"
        mine[2].data["rows"].append(2)
        mine[1].data["new"] = 1
        again = await store.list_timeline_events("run-1")
        assert again == got


async def test_an_event_whose_time_is_no_datetime_is_refused_and_nothing_is_kept() -> None:
    """A caller's event with a text time is refused at the append, naming the run; the
    run's timeline stays readable and holds only the good events."""
    from cordtrio.errors import ValidationError

    store = MemoryStore()
    await store.create_run(big_run())
    good = TimelineEvent(time=at(1), type="run_status", run_id="run-1", status="running")
    await store.append_timeline_event("run-1", good)
    bad = TimelineEvent(time=at(2), type="step_completed", run_id="run-1")
    bad.time = "2026-01-01T00:00:00Z"  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="run-1"):
        await store.append_timeline_events("run-1", [bad])
    with pytest.raises(ValidationError, match="time"):
        await store.append_timeline_event("run-1", bad)
    assert [e.type for e in await store.list_timeline_events("run-1")] == ["run_status"]


async def test_an_event_with_the_shared_empty_data_reads_back_with_a_map_of_its_own() -> None:
    """Kept events without data share one read-only map (``NO_DATA``, as the engine's core
    makes them); a read hands out a fresh, changeable ``{}``, never that map."""
    store = MemoryStore()
    await store.create_run(big_run())
    event = TimelineEvent(time=at(1), type="run_status", run_id="run-1", data=NO_DATA)
    store.save_run_changes_now(await store.get_run("run-1"), RunChanges(), [event])
    (read,) = await store.list_timeline_events("run-1")
    assert read.data == {} and read.data is not NO_DATA and type(read.data) is dict
    read.data["x"] = 1
    assert (await store.list_timeline_events("run-1"))[0].data == {} and NO_DATA == {}
