"""The store port (API.md "Store", SPEC §11): timelines and idempotency keys,
run against every storage backend."""

from __future__ import annotations

from typing import Any

import pytest
from store_builders import at, run

from cordtrio.errors import ValidationError
from cordtrio.model import (
    TimelineEvent,
)
from cordtrio.ports import Store

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


async def test_timeline_text_fields_read_back_as_plain_strings(store: Store) -> None:
    from cordtrio.model import RunStatus, StepStatus

    e = TimelineEvent(time=at(1), type=RunStatus.FAILED, run_id="", step_id=StepStatus.RUNNING,
                      job_id="j", status=StepStatus.SUCCEEDED, message=RunStatus.WAITING)
    await store.append_timeline_events("run-1", [e])
    (got,) = await store.list_timeline_events("run-1")
    fields = (got.type, got.run_id, got.step_id, got.status, got.message)
    assert fields == ("failed", "run-1", "running", "succeeded", "waiting")
    assert all(type(f) is str for f in fields)


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


async def test_timeline_reads_back_what_a_document_round_trip_gives(store: Store) -> None:
    from datetime import timedelta, timezone

    from cordtrio.model import RunStatus

    plus2 = timezone(timedelta(hours=2))
    e = TimelineEvent(time=at(5).astimezone(plus2), type="run_status", run_id="run-1",
                      status=RunStatus.RUNNING, data={"rows": [1, {"a": None}]})
    await store.append_timeline_events("run-1", [e])
    (got,) = await store.list_timeline_events("run-1")
    assert got == TimelineEvent.from_dict(e.to_dict())
    assert got.time == at(5) and got.time.utcoffset() == timedelta(0)
    assert type(got.status) is str and got.status == "running"
    got.data["rows"].append(2)
    (again,) = await store.list_timeline_events("run-1")
    assert again.data == {"rows": [1, {"a": None}]}


@pytest.mark.parametrize("data", [
    {"context_ptr": "redis://ctx:r:s@1"}, {"k": ""}, {"": "v"}, {"k": 1}, {"k": None},
    {"k": ["v"]}, {"a": "1", "b": "2"}, {}])
async def test_timeline_data_of_any_shape_round_trips_unshared(
        store: Store, data: dict[str, Any]) -> None:
    """One entry of text (a dispatched job's pointer, the commonest data) reads back as any
    other data does: the same map, a copy the caller may change, with every other field."""
    for message, result_ptr in (("", ""), ("m", ""), ("", "p")):
        e = TimelineEvent(time=at(1), type="step_dispatched", run_id="run-d", step_id="s",
                          job_id="j", status="running", result_ptr=result_ptr,
                          message=message, data=dict(data))
        await store.append_timeline_events("run-d", [e])
        (got,) = await store.list_timeline_events("run-d", 1)
        assert got.to_dict() == e.to_dict() and got.data == data
        got.data["x"] = "y"
        (again,) = await store.list_timeline_events("run-d", 1)
        assert again.data == data
