"""``step_argv`` (the engine step's script arguments, built straight from the run) gives the
very arguments of the general path (``_change_ops`` → ``FieldOps`` → ``StepArgs``), and
leaves the mirrored field names as it does, over runs and changes of every shape."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from step_args_reference import general_argv

from cordtrio.backends.redis.adapter import RedisAdapter
from cordtrio.backends.redis.keys import HEADER, ORD, run_key
from cordtrio.backends.redis.payloads import RedisPayloadStore
from cordtrio.backends.redis.step_argv import step_argv
from cordtrio.backends.redis.step_write import report_step_commands, step_keys
from cordtrio.backends.redis.store import RedisStore
from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun
from cordtrio.ports import RunChanges

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IDS = ["s0", "s1", "a:b", "é"]
CHILDREN = ["0", "1", "10", "2"]
CTX_KEYS = ["out", "x", "steps"]


def _store(retention: int | None, payload_ttl: int | None) -> RedisStore:
    adapter = RedisAdapter(fakeredis.FakeAsyncRedis(), None, "redis://test")
    store = RedisStore(adapter, retention_seconds=retention)
    assert store.commits_payloads_of(RedisPayloadStore(adapter, ttl_seconds=payload_ttl))
    return store


class _Ranks:
    """Deterministic ``_ranks``: the same first ranks for both paths."""

    def __init__(self) -> None:
        self.next = 1_767_225_600_000_000_000

    def __call__(self, count: int) -> int:
        first, self.next = self.next, self.next + count
        return first


@st.composite
def shapes(draw: st.DrawFn) -> tuple[WorkflowRun, RunChanges, set[str] | None, str]:
    status = draw(st.sampled_from(list(RunStatus)))
    run = WorkflowRun(
        id=draw(st.sampled_from(["run-1", "r:ü"])), workflow_id="wf-1",
        org_id=draw(st.sampled_from(["", "org-a"])), status=status, input={},
        created_at=T0, updated_at=draw(st.sampled_from([None, T0 + timedelta(seconds=1.5)])),
        idempotency_key=draw(st.sampled_from(["", "idem-1"])))
    for sid in draw(st.lists(st.sampled_from(IDS), unique=True)):
        sr = StepRun(step_id=sid, status=draw(st.sampled_from(list(StepStatus))),
                     attempts=draw(st.integers(0, 2)))
        for cid in draw(st.lists(st.sampled_from(CHILDREN), unique=True, max_size=3)):
            sr.children[cid] = StepRun(step_id=cid, status=StepStatus.SUCCEEDED, item=cid)
        run.steps[sid] = sr
    for k in draw(st.lists(st.sampled_from(["out", "x"]), unique=True)):
        run.context[k] = {"v": draw(st.integers())}
    steps_map = draw(st.sampled_from([None, "map", "value"]))
    if steps_map == "map":
        run.context["steps"] = {k: {"output": k} for k in draw(
            st.lists(st.sampled_from(IDS), unique=True))}
    elif steps_map == "value":
        run.context["steps"] = [1]
    changes = RunChanges(
        header=draw(st.integers(0, 3)) > 0,
        steps=set(draw(st.lists(st.sampled_from(
            list(run.steps) if run.steps and draw(st.booleans()) else IDS),
            unique=True, max_size=3))),
        children={p: set(draw(st.lists(st.sampled_from(CHILDREN), unique=True, max_size=3)))
                  for p in draw(st.lists(st.sampled_from(IDS), unique=True, max_size=2))
                  if p in run.steps or not draw(st.integers(0, 3))},
        context_steps=set(draw(st.lists(st.sampled_from(IDS), unique=True, max_size=3))),
        context_keys={k for k in draw(st.lists(st.sampled_from(CTX_KEYS), unique=True,
                                               max_size=2))
                      if k != "steps" or not draw(st.integers(0, 3))},
        previous_status=draw(st.sampled_from([None, *RunStatus])),
        payloads={f"ctx:{i}": draw(st.sampled_from([b"{}", bytearray(b"[1]")]))
                  for i in range(draw(st.integers(0, 2)))})
    known: set[str] | None = None
    if draw(st.integers(0, 3)):
        names = [HEADER, "step:s0", "ctxstep:s0", "ctx:steps", "child:s0:1", "ctx:out"]
        known = set(draw(st.lists(st.sampled_from(names), unique=True)))
        if draw(st.integers(0, 3)):
            known.add(HEADER)
        known.update(ORD + n for n in list(known) if n != HEADER and draw(st.booleans()))
    return run, changes, known, draw(st.sampled_from(["", "engine-1"]))


def _both(store: RedisStore, run: WorkflowRun, changes: RunChanges, known: set[str] | None,
          owner: str, docs: list[bytes]) -> None:
    if run.updated_at is None and changes.header:
        run.updated_at = T0  # as ``save_run_changes`` stamps it first
    if known is not None and (not changes.header or HEADER not in known):
        known = None  # as ``save_run_changes`` hands it over
    direct_known = None if known is None else set(known)
    direct = step_argv(run, changes, owner, "tok-1", direct_known, _Ranks(), docs,
                       store.retention_seconds,
                       store._committed_ttl() if changes.payloads else None)
    ops = store._change_ops(run, changes)
    if ops.prefixes:
        assert direct is None
        return
    store._ranks = _Ranks()  # type: ignore[method-assign]
    heard: list[tuple[Any, ...]] = []
    general = general_argv(store, run, changes, ops, owner or None, "tok-1", known,
                           run_key(run.id), docs, heard.append)
    assert direct is not None
    told: list[tuple[Any, ...]] = []
    report_step_commands(direct[0], step_keys(run.id), told.append)
    assert sorted(map(repr, told)) == sorted(map(repr, heard))  # the commands counted
    assert direct[1] is general[1]
    assert [(type(a), a) for a in direct[0]] == [(type(a), a) for a in general[0]]
    assert direct_known == known


@settings(max_examples=400, deadline=None)
@given(shapes(), st.sampled_from([None, 3600]), st.sampled_from([None, 60]),
       st.integers(0, 3))
def test_step_argv_gives_the_general_paths_arguments(
        shape: tuple[WorkflowRun, RunChanges, set[str] | None, str], retention: int | None,
        payload_ttl: int | None, events: int) -> None:
    run, changes, known, owner = shape
    docs = [b'{"type":"e%d"}' % i for i in range(events)]
    _both(_store(retention, payload_ttl), run, changes, known, owner, docs)


def test_step_argv_of_the_engines_chain_steps() -> None:
    """The shapes of a chain's steps (W1): the first dispatch, a step done and the next
    dispatched, the last step done (terminal: the active set and the retention), each with
    and without a mirror."""
    store = _store(3600, 60)
    run = WorkflowRun(id="run-1", workflow_id="wf-1", org_id="org-a",
                      status=RunStatus.RUNNING, input={}, created_at=T0, updated_at=T0,
                      started_at=T0)
    ticks = itertools.count(1)
    run.steps["s0"] = StepRun(step_id="s0", status=StepStatus.RUNNING, attempts=1)
    writes: list[tuple[RunChanges, Any]] = [(RunChanges(
        header=True, steps={"s0"}, previous_status=RunStatus.PENDING,
        payloads={"ctx:run-1:s0@1": b"{}"}), None)]
    for i in range(1, 3):
        def step(i: int = i) -> None:
            run.steps[f"s{i - 1}"].status = StepStatus.SUCCEEDED
            run.steps[f"s{i}"] = StepRun(step_id=f"s{i}", status=StepStatus.RUNNING,
                                         attempts=1)
            run.context.setdefault("steps", {})[f"s{i - 1}"] = {"output": {"ok": True}}
        writes.append((RunChanges(header=True, steps={f"s{i - 1}", f"s{i}"},
                                  context_steps={f"s{i - 1}"},
                                  previous_status=RunStatus.RUNNING,
                                  payloads={f"ctx:run-1:s{i}@1": b"{}"}), step))

    def finish() -> None:
        run.steps["s2"].status = StepStatus.SUCCEEDED
        run.status = RunStatus.SUCCEEDED
        run.completed_at = T0 + timedelta(seconds=9)
        run.output = {"s2": {"ok": True}}
    writes.append((RunChanges(header=True, steps={"s2"}, context_steps={"s2"},
                              previous_status=RunStatus.RUNNING), finish))
    known = {HEADER, "input"}
    for changes, change in writes:
        if change is not None:
            change()
        run.updated_at = T0 + timedelta(seconds=next(ticks))
        for mirrored in (None, known):
            _both(store, run, changes, mirrored, "", [b'{"type":"x"}'])


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.commands.append((name, *args))


def _queue_index_as_written_before(pipe: Any, run: WorkflowRun, status: str,
                                   previous: tuple[str, ...], sync_active: bool) -> None:
    """The index moves as ``_queue_index`` queued them one by one (the reference)."""
    from cordtrio.backends.redis.base import TERMINAL_STATUSES
    from cordtrio.backends.redis.keys import RUNS_ALL, active_runs_key, runs_by_status_key
    stamp = run.updated_at
    updated = stamp.timestamp() if stamp is not None else 0.0
    if not updated:
        updated = run.created_at.timestamp() if run.created_at is not None else 0.0
    moved = False
    for old in previous:
        if old != status:
            pipe.zrem(runs_by_status_key(old), run.id)
            moved = True
    pipe.zadd(runs_by_status_key(status), {run.id: updated})
    pipe.zadd(RUNS_ALL, {run.id: updated})
    if not moved and previous and not sync_active:
        return
    if not sync_active and len(previous) == 1 and \
            (previous[0] in TERMINAL_STATUSES) == (status in TERMINAL_STATUSES):
        return
    if status in TERMINAL_STATUSES:
        pipe.srem(active_runs_key(run.org_id), run.id)
    else:
        pipe.sadd(active_runs_key(run.org_id), run.id)


STATUSES = [s.value for s in RunStatus] + ["unknown"]


@pytest.mark.parametrize("sync_active", [False, True])
@pytest.mark.parametrize("status", STATUSES)
def test_index_moves_are_those_queued_one_by_one(status: str, sync_active: bool) -> None:
    from cordtrio.backends.redis.run_index import RUN_STATUSES, RedisRunIndex
    for previous in [(), RUN_STATUSES, *((s,) for s in STATUSES), ("running", "unknown")]:
        for updated in (None, T0):
            run = WorkflowRun(id="r1", org_id="o", created_at=T0 - timedelta(days=1),
                              updated_at=updated)
            got, want = _Recorder(), _Recorder()
            RedisRunIndex._queue_index(got, run, status, previous=previous,
                                       sync_active=sync_active)
            _queue_index_as_written_before(want, run, status, previous, sync_active)
            assert got.commands == want.commands


@pytest.mark.parametrize("previous", [None, *RunStatus, "running", " Running", "unknown"])
def test_previous_statuses_are_the_status_zsets_a_run_may_be_in(previous: Any) -> None:
    from cordtrio.backends.redis.run_index import RUN_STATUSES, previous_statuses
    from cordtrio.ports import status_text

    expected = RUN_STATUSES if previous is None else (status_text(previous),)
    assert previous_statuses(previous) == expected
    assert previous_statuses(previous) == expected  # (kept per status)
