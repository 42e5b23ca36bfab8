"""The ready pass's frontier (``cordtrio.core.frontier``): an event costs what it changes,
not a walk over every step; and ``Tx.timeline`` (positional construction) fills every
field where it belongs. Sync with the run is checked by property in
``tests/properties/test_frontier_properties.py``."""

from __future__ import annotations

from typing import Any

import pytest
from harness import T0, Sim, step, workflow

from cordtrio.core import machine, ready
from cordtrio.core.events import Approve
from cordtrio.core.state import Tx
from cordtrio.model import RunStatus, StepStatus, StepType, TimelineEvent, WorkflowRun


def _wide(branches: int = 50, depth: int = 4) -> Any:
    steps = [step(f"b{b}s{i}", depends_on=[f"b{b}s{i - 1}"] if i else [])
             for b in range(branches) for i in range(depth)]
    steps.append(step("join", depends_on=[f"b{b}s{depth - 1}" for b in range(branches)]))
    return workflow(*steps)


def test_a_result_visits_only_the_steps_it_can_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """201 steps: starting visits the 50 branch heads; each result then visits the one step
    it unblocks (the walk it replaced visited all 201, at least once per result)."""
    visits: list[str] = []
    real = ready._visit

    def counting(tx: Tx, sid: str, only_handlers: bool) -> bool:
        visits.append(sid)
        return real(tx, sid, only_handlers)

    monkeypatch.setattr(ready, "_visit", counting)
    # the general path's visits (the short way for plain jobs, ``core.quick``, visits none)
    monkeypatch.setattr(machine, "quick_start", lambda _tx: False)
    monkeypatch.setattr(machine, "quick_result", lambda *_: False)
    sim = Sim(_wide())
    sim.start()
    assert sorted(visits) == sorted(f"b{b}s0" for b in range(50))
    results = 0
    while sim.running_jobs():
        visits.clear()
        job = sorted(sim.running_jobs())[0]
        sim.succeed(job)
        results += 1
        assert len(visits) <= 1, visits
    assert results == 201
    assert sim.run.status == RunStatus.SUCCEEDED


def test_a_loaded_run_rebuilds_its_frontier() -> None:
    """Derived data: a state loaded from the stored form has none until its first ready
    pass, which builds it from the run."""
    wf = workflow(step("a"), step("gate", type=StepType.APPROVAL, depends_on=["a"]),
                  step("b", depends_on=["gate"]))
    sim = Sim(wf)
    sim.start()
    assert sim.state.frontier is not None
    sim.succeed(sim.job("a"))
    assert sim.run.status == RunStatus.WAITING
    loaded = Sim(wf, run=WorkflowRun.from_dict(sim.run.to_dict()))
    assert loaded.state.frontier is None
    loaded.feed(Approve("gate", True))
    assert loaded.state.frontier is not None
    assert loaded.status("b") == StepStatus.RUNNING
    assert loaded.dispatched() == [f"{loaded.run.id}:b@1"]


def test_timeline_fills_every_field_by_name() -> None:
    sim = Sim(workflow(step("a")))
    tx = Tx(sim.plan, sim.state, T0)
    tx.timeline("t", step_id="s", job_id="j", status="st", result_ptr="p", message="m",
                data={"k": 1})
    [effect] = tx.rows
    assert isinstance(effect, TimelineEvent) and not tx.effects
    ev = effect
    assert (ev.time, ev.type, ev.run_id, ev.workflow_id, ev.step_id, ev.job_id, ev.status,
            ev.result_ptr, ev.message, ev.data) == (
        T0, "t", sim.run.id, sim.run.workflow_id, "s", "j", "st", "p", "m", {"k": 1})
    tx.timeline("u")
    second = tx.rows[1]
    assert isinstance(second, TimelineEvent) and second.data == {}


def test_a_busy_error_handler_keeps_the_run_running() -> None:
    """SPEC §7 through the frontier's counts: a's failure triggers its handler h; while h
    runs, the run is running, and h's success leaves the failure standing."""
    sim = Sim(workflow(step("a", on_error="h"), step("b"), step("h")))
    sim.start()
    sim.fail(sim.job("a"))
    assert sim.status("h") == StepStatus.RUNNING
    assert sim.run.status == RunStatus.RUNNING
    front = sim.state.frontier
    assert front is not None and front.run_status(sim.run) == RunStatus.RUNNING
    sim.succeed(sim.job("h"))
    assert sim.run.status == RunStatus.FAILED
