"""The run parts written straight from the objects (``run_json``): the same bytes as
``dumps`` of their documents, or the same error, for plain and unusual field values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordtrio.backends.redis.run_hash import dumps
from cordtrio.backends.redis.run_json import event_docs, event_json, header_json, step_json
from cordtrio.errors import ValidationError
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun

T0 = datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2026, 12, 3, 12, 0, tzinfo=timezone(timedelta(hours=2)))


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


ODD = ["é\n\u2028\x00\"\\", 7, 2.5, True, None, [1, (2, 3)], {"k": {"n": [None]}},
       {1: "int key"}, Colour.RED, Level.HIGH, 10**30]
"""Values of types the documents do not declare, or that need escaping."""

RUNS = [
    WorkflowRun(id="r1", workflow_id="wf"),
    WorkflowRun(id="r\"2", workflow_id="w\u00e9", org_id="o", team_id="t",
                input={"x": 1}, context={"a": 1}, status=RunStatus.SUCCEEDED,
                started_at=T0, completed_at=T1, output={"out": [1, "é"]},
                error={"message": "boom"}, total_cost=1.25, triggered_by="cron",
                created_at=T0, updated_at=T1, labels={"a": "b"}, metadata={"m": "n"},
                idempotency_key="idem", rerun_of="r0", rerun_step="s", dry_run=True),
    WorkflowRun(id="r3", workflow_id="wf", total_cost=3, status=RunStatus.WAITING),
    WorkflowRun(id="r4", workflow_id="wf", total_cost=0.0, dry_run=1),  # type: ignore[arg-type]
] + [WorkflowRun(id="odd", workflow_id="wf", org_id=v, triggered_by=v, rerun_of=v,
                 total_cost=v, output=v, labels=v)  # type: ignore[arg-type]
     for v in ODD]

STEPS = [
    StepRun(),
    StepRun(step_id="s", status=StepStatus.RUNNING, started_at=T0, attempts=1, job_id="j"),
    StepRun(step_id="s\u2028", status=StepStatus.FAILED, started_at=T0, completed_at=T1,
            next_attempt_at=T0, attempts=3, input={"i": [1]}, output={"o": 1},
            error={"message": "x"}, job_id="j", item={"n": 1},
            children={"s[0]": StepRun(step_id="s[0]", output="o"), "s[1]": StepRun()}),
] + [StepRun(step_id=v, output=v, item=v, attempts=v, job_id=v,  # type: ignore[arg-type]
             input=v, error=v) for v in ODD]

EVENTS = [
    TimelineEvent(),
    TimelineEvent(time=T0, type="step_completed", run_id="r", workflow_id="wf",
                  step_id="s", job_id="j", status="succeeded", result_ptr="redis://x",
                  message="m\n", data={"context_ptr": "redis://ctx"}),
    TimelineEvent(time=T1, type="run_status", run_id="other", status="running"),
] + [TimelineEvent(time=T0, type=v, step_id=v, message=v, data=v)  # type: ignore[arg-type]
     for v in ODD]


def _same(fast: Any, general: Any) -> None:
    """Both give the same bytes, or both raise the same error."""
    try:
        expected = general()
    except Exception as exc:
        with pytest.raises(type(exc)) as got:
            fast()
        assert str(got.value) == str(exc)
        return
    assert fast() == expected


@pytest.mark.parametrize(("full", "empty", "elsewhere"), [
    (RUNS[1], WorkflowRun(id="", workflow_id=""), {"steps"}),  # steps: fields of their own
    (STEPS[2], StepRun(), set()),
    (EVENTS[1], TimelineEvent(), set()),
], ids=["run", "step", "event"])
def test_the_full_samples_set_every_field(full: Any, empty: Any, elsewhere: set[str]) -> None:
    """``run_json`` writes each document field by field: a field added to a document
    class must be set in its full sample, so the byte comparisons below cover it."""
    unset = {f.name for f in dataclasses.fields(full)
             if getattr(full, f.name) == getattr(empty, f.name)}
    assert unset == elsewhere


@pytest.mark.parametrize("run", RUNS)
def test_header_json_writes_the_header_document(run: WorkflowRun) -> None:
    _same(lambda: header_json(run, "where"),
          lambda: dumps(run.header_dict(with_input=False), "where"))


@pytest.mark.parametrize("sr", STEPS)
@pytest.mark.parametrize("with_children", [True, False])
def test_step_json_writes_the_step_document(sr: StepRun, with_children: bool) -> None:
    _same(lambda: step_json(sr, "where", with_children=with_children),
          lambda: dumps(sr.to_dict(with_children=with_children), "where"))


def _stored_event(event: TimelineEvent, run_id: str, now: str) -> bytes:
    doc = event.to_dict()
    if not doc.get("time"):
        doc["time"] = now
    if not doc.get("run_id"):
        doc["run_id"] = run_id
    return dumps(doc, "where")


@pytest.mark.parametrize("event", EVENTS)
def test_event_json_writes_the_stored_event(event: TimelineEvent) -> None:
    now = "2026-12-03T10:00:00Z"
    _same(lambda: event_json(event, "run-1", now, "where"),
          lambda: _stored_event(event, "run-1", now))


@pytest.mark.parametrize("run_id", ["", None, "run-1"])
def test_an_event_naming_no_run_is_given_the_writes_run_id_even_an_empty_one(
        run_id: Any) -> None:
    event = TimelineEvent(time=T0, type="t", step_id="s")
    assert event_json(event, run_id, "now", "where") == dumps(
        {**event.to_dict(), "run_id": run_id}, "where")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(EVENTS) + 3)), max_size=8))
def test_events_of_one_write_are_each_written_as_alone(picks: list[int]) -> None:
    """``event_docs`` reuses one event's time for the next while it holds the same
    object (its id fields' texts are kept per value): each text is still the one stored
    for that event alone,
    whatever events come before it (odd ones, ones without a time, other runs)."""
    shared = dataclasses.replace(EVENTS[1])  # the same objects as EVENTS[1], another event
    same_run = TimelineEvent(time=EVENTS[1].time, type="t", run_id=EVENTS[1].run_id,
                             workflow_id=EVENTS[1].workflow_id, step_id="s2")
    no_time = TimelineEvent(type="t", run_id=EVENTS[1].run_id, workflow_id="w")
    pool = [*EVENTS, shared, same_run, no_time]
    events = [pool[i] for i in picks]
    asked: list[int] = []

    def now() -> str:
        asked.append(1)
        return "2026-12-03T10:00:00Z"

    try:
        expected: Any = [_stored_event(e, "run-1", "2026-12-03T10:00:00Z") for e in events]
    except ValidationError as exc:
        expected = exc
    try:
        got: Any = event_docs(events, "run-1", now, "where")
    except ValidationError as exc:
        got = exc
    if isinstance(expected, ValidationError):
        assert str(got) == str(expected)
    else:
        assert got == expected
        assert len(asked) == (1 if any(e.time is None for e in events) else 0)


def test_a_value_that_is_not_json_fails_as_dumps_fails_and_leaves_nothing_behind() -> None:
    with pytest.raises(ValidationError, match=r"run 'r' step 's': not JSON-serialisable"):
        step_json(StepRun(step_id="s", item=[object()]), ("run {!r} step {!r}", "r", "s"))
    with pytest.raises(ValidationError, match=r"^run 'r': not JSON-serialisable"):
        header_json(WorkflowRun(id="r", output={"o": object()}), ("run {!r}", "r"))
    with pytest.raises(ValidationError, match="timeline event: not JSON-serialisable"):
        event_json(TimelineEvent(time=T0, data={"x": {1, 2}}), "r", None, "timeline event")
    assert step_json(StepRun(step_id="s", item=[[]]), "w") == \
        b'{"step_id":"s","status":"pending","item":[[]]}'


def test_plain_parts_are_written_without_building_their_documents(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparisons above exercise the direct path: plain parts never build a dict."""
    run, sr, event = RUNS[1], STEPS[2], EVENTS[1]
    expected = [dumps(run.header_dict(with_input=False), "w"),
                dumps(sr.to_dict(with_children=False), "w"), _stored_event(event, "r", "now")]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("document built")

    for cls, name in [(WorkflowRun, "header_dict"), (StepRun, "to_dict"),
                      (TimelineEvent, "to_dict")]:
        monkeypatch.setattr(cls, name, refuse)
    assert [header_json(run, "w"), step_json(sr, "w", with_children=False),
            event_json(event, "r", "now", "w")] == expected


def _hash_of(run: WorkflowRun) -> dict[bytes, bytes]:
    """The run's hash fields as ``create_run`` writes them (values written directly)."""
    from cordtrio.backends.redis.store import RedisStore

    store = RedisStore.__new__(RedisStore)
    store._last_rank = 0
    return {k.encode(): v for k, v in store._whole_run(run).items()}


@pytest.mark.parametrize("run", [
    RUNS[0], RUNS[1],
    WorkflowRun(id="r", workflow_id="wf", status=RunStatus.RUNNING, created_at=T0,
                context={"k": [1], "steps": {"a": {"output": {"ok": True}}, "b": {}}},
                steps={"a": STEPS[1], "b": STEPS[2]}),
])
def test_a_run_reads_back_as_from_dict_of_its_document(run: WorkflowRun) -> None:
    """``assemble`` puts the decoded context and steps in without ``from_dict``'s copy:
    the same run as ``from_dict`` of the whole document, sharing nothing between reads."""
    from cordtrio.backends.redis.run_hash import assemble

    fields = _hash_of(run)
    got, again = assemble("k", fields), assemble("k", fields)
    assert got == WorkflowRun.from_dict(run.to_dict()) == again
    if "k" in got.context:
        assert got.context is not again.context
        got.context["k"].append(2)
        assert again.context["k"] == [1]


def test_a_run_read_ignores_fields_of_no_kind_and_sorts_unranked_parts_last() -> None:
    """``assemble`` tells a field's kind by the name before its first ``:``: a name without
    one (``step``, ``ord``) is no part, and a part whose rank is missing or corrupt comes
    after the ranked ones, as when every rank was parsed up front."""
    from cordtrio.backends.redis.run_hash import assemble

    run = WorkflowRun(id="r", workflow_id="wf", status=RunStatus.RUNNING, created_at=T0,
                      steps={"a": STEPS[1], "b": STEPS[2], "c": StepRun(step_id="c")})
    fields = _hash_of(run)
    odd = dict(fields)
    odd.update({b"step": b"{}", b"ord": b"1", b"ctx": b"[]", b"child": b"{}"})
    assert assemble("k", odd) == assemble("k", fields) == WorkflowRun.from_dict(run.to_dict())
    del odd[b"ord:step:a"]
    odd[b"ord:step:b"] = b"not a rank"
    assert list(assemble("k", odd).steps) == ["c", "a", "b"]  # unranked: by name, last


def test_timestamp_texts_are_the_same_from_the_cache_and_across_its_flips() -> None:
    """``run_json`` looks timestamps up in ``timestamp_text``'s cache dict itself: the dict must
    stay the one it holds (emptied on a flip, never replaced) and give ``format_ts``'s
    text, for a hit, a miss, and an entry kept over a flip."""
    from cordtrio import fields
    from cordtrio.backends.redis import run_json
    from cordtrio.timeutil import format_ts

    cache = fields.RECENT_TS_TEXTS
    stamps = [T0 + timedelta(microseconds=i) for i in range(2 * fields._TS_CACHE_MAX + 3)]
    for ts in stamps:
        assert fields.timestamp_text(ts) == format_ts(ts)
    assert fields.RECENT_TS_TEXTS is cache and run_json._cached.__self__ is cache
    assert len(cache) <= fields._TS_CACHE_MAX
    for ts in (stamps[0], stamps[-1], T1):  # evicted, cached, never seen (another zone)
        sr = StepRun(step_id="s", started_at=ts)
        assert step_json(sr, "w") == dumps(sr.to_dict(), "w")
        assert (cache.get(ts) or fields.timestamp_text(ts)) == format_ts(ts)
        assert fields.new_timestamp_text(ts) == format_ts(ts)  # (also when it was kept)
        assert cache[ts] == format_ts(ts)


def test_escaped_ids_are_the_same_from_the_cache_and_after_it_empties() -> None:
    """Ids, statuses and event types are escaped once and looked up after (``_QUOTED``):
    a hit, a miss, a string equal to a cached one of another type, and the cache emptied
    when full all give ``dumps``' bytes; a value that is not a string is not kept."""
    from cordtrio.backends.redis import run_json

    cache = run_json._QUOTED
    event = TimelineEvent(time=T0, type="step_completed", run_id="r\"1", workflow_id="wf",
                          step_id=Colour.RED, job_id="j\u2028", status="succeeded")
    run = WorkflowRun(id="r\"1", workflow_id="red", org_id="o")
    for _ in range(2):  # a miss, then a hit
        _same(lambda: event_json(event, "run-1", None, "w"),
              lambda: _stored_event(event, "run-1", "unused"))
        _same(lambda: header_json(run, "w"),
              lambda: dumps(run.header_dict(with_input=False), "w"))
    assert cache["r\"1"] == '"r\\"1"'
    for i in range(run_json._QUOTED_MAX + 1):
        assert cache[f"id-{i}"] == f'"id-{i}"'
    assert len(cache) <= run_json._QUOTED_MAX and run_json._QUOTED is cache
    sr = StepRun(step_id="id-0", job_id="j\u2028")  # emptied since: a miss again
    assert step_json(sr, "w") == dumps(sr.to_dict(), "w")
    with pytest.raises(TypeError):
        cache[Level.HIGH]
    assert Level.HIGH not in cache


def test_ranks_keep_increasing_when_the_clock_does_not() -> None:
    from unittest import mock

    from cordtrio.backends.redis import base
    from cordtrio.backends.redis.store import RedisStore

    store = RedisStore.__new__(RedisStore)
    store._last_rank = 0
    with mock.patch.object(base, "time_ns", side_effect=[50, 50, 40, 100]):
        assert [store._rank() for _ in range(4)] == [b"50", b"51", b"52", b"100"]


@pytest.mark.parametrize("keys", [{"b", "z", "a"}, ["b", "z", "a", "b"], iter(["z", "a", "b"])])
def test_ordered_follows_the_order_then_names_the_absent_ones_sorted(keys: Any) -> None:
    from cordtrio.backends.redis.run_hash import ordered

    assert ordered(keys, ["a", "x", "b"]) == ["a", "b", "z"]
    assert ordered({"a"}, []) == ["a"]


HEADER_VALUES: dict[str, list[Any]] = {
    "id": ["r1", "r2"],
    "workflow_id": ["wf", "wf2", Colour.RED, "red"],
    "org_id": ["", "o", Colour.RED, "red"],
    "team_id": ["", "t"],
    "status": [RunStatus.RUNNING, RunStatus.SUCCEEDED, "running", Colour.RED],
    "started_at": [None, T0, T1, T1.astimezone(UTC), T0.replace(tzinfo=None)],
    "completed_at": [None, T0, T1],
    "output": [{}, {"o": 1}, {"o": 1.0}],
    "error": [{}, {"message": "x"}],
    "total_cost": [0, 0.0, False, 1, 1.0, True, None],
    "triggered_by": ["", "cron", 0],
    "created_at": [None, T0, T1, T1.astimezone(UTC)],
    "updated_at": [None, T0, T1],
    "labels": [{}, {"a": "b"}],
    "metadata": [{}, {"m": "n"}],
    "idempotency_key": ["", "idem"],
    "rerun_of": ["", "r0"],
    "rerun_step": ["", "s"],
    "dry_run": [False, True, 1, 0],
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(sorted(HEADER_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(HEADER_VALUES[name]))),
    max_size=12))
def test_a_header_written_again_after_any_change_is_the_header_document(
        changes: list[tuple[str, Any]]) -> None:
    """The texts kept per run around ``updated_at`` (``_HEADS``) never give a stale header:
    after each change of any field (to a value equal to the old one but of another type,
    the same instant in another zone...), the header is the document's bytes."""
    run = WorkflowRun(id="r1", workflow_id="wf", status=RunStatus.RUNNING, created_at=T0,
                      updated_at=T0)
    for name, value in [("updated_at", T0), *changes]:
        setattr(run, name, value)
        _same(lambda: header_json(run, "where"),
              lambda: dumps(run.header_dict(with_input=False), "where"))
        _same(lambda: header_json(run, "where"),  # the kept texts, if any
              lambda: dumps(run.header_dict(with_input=False), "where"))


def test_an_event_with_the_shared_empty_data_is_written_as_one_without_data() -> None:
    """The core's rows without data carry the read-only ``NO_DATA``: written as an empty
    map's (no ``data`` field), the general way too."""
    from cordtrio.model import NO_DATA

    shared = TimelineEvent(time=T0, type="step_completed", data=NO_DATA)
    own = TimelineEvent(time=T0, type="step_completed")
    expected = _stored_event(own, "r", "now")
    assert b'"data"' not in expected
    assert event_json(shared, "r", "now", "w") == expected
    assert _stored_event(shared, "r", "now") == expected


def test_field_pieces_are_the_fields_texts_from_the_cache_and_after_it_empties() -> None:
    """An optional id field (``_Pieces``: run, workflow, step and job ids, statuses) is
    looked up as its whole text: ``,"name":<escaped>``, or nothing for an empty value; a
    string equal to a cached one of another type gives the same text; a value that is not
    a string raises (the general path writes it) and is not kept; emptied when full."""
    from cordtrio.backends.redis import run_json

    pieces = run_json._JOB_ID
    for _ in range(2):  # a miss, then a hit
        assert pieces["j\u2028\""] == ',"job_id":"j\u2028\\""'
        assert pieces[""] == pieces[None] == pieces[0] == ""
    assert pieces["red"] == pieces[Colour.RED] == ',"job_id":"red"'
    with pytest.raises(TypeError):
        pieces[Level.HIGH]
    assert Level.HIGH not in pieces
    for i in range(run_json._QUOTED_MAX + 1):
        assert pieces[f"j-{i}"] == f',"job_id":"j-{i}"'
    assert len(pieces) <= run_json._QUOTED_MAX and run_json._JOB_ID is pieces
    event = TimelineEvent(time=T0, type="step_completed", run_id="r", job_id="j-0",
                          status=Colour.RED)  # emptied since: a miss again
    _same(lambda: event_json(event, "run-1", None, "w"),
          lambda: _stored_event(event, "run-1", "unused"))
    sr = StepRun(step_id="s", status=StepStatus.RUNNING, job_id=Level.HIGH)  # type: ignore[arg-type]
    _same(lambda: step_json(sr, "w"), lambda: dumps(sr.to_dict(), "w"))
