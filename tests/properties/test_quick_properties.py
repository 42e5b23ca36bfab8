"""The short ways of deciding a new run's start and a job result (``cordtrio.core.quick``)
decide exactly like the general path (``ready_pass``, ``apply_result`` then ``ready_pass``):
replaying a run with the short ways turned off gives the same effects in the same order,
the same changes and the same run, event after event. And the core's entry for a bare job
result (``decide_result``, the engine's for every result from the bus) decides like
``decide`` given ``ResultReceived``, and so does a working area renewed for every event
(``Tx.renew``, as the run task does)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_driver import COMMON, _describe, examples, new_run, reloaded, simulate
from strategies import run_inputs, workflows

from cordtrio.core import machine
from cordtrio.core.events import ResultReceived
from cordtrio.core.machine import Outcome, decide, decide_in, decide_result, decide_result_in
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState, Tx
from cordtrio.model import Workflow


def _changes(out: Outcome) -> tuple[Any, ...]:
    c = out.changes
    return (c.header, c.steps, c.children, c.context_steps, c.context_keys, c.previous_status)


def _replay_without_short_way(wf: Workflow, run_input: dict[str, Any], data: Any) -> None:
    _replay(wf, run_input, data, short_ways=False)


def _replay(wf: Workflow, run_input: dict[str, Any], data: Any, *, short_ways: bool,
            renewed: bool = False) -> None:
    """Simulate a run (``decide`` on every event), then replay its events on a new state,
    and compare each outcome and run: ``short_ways=False``, with the short ways turned off;
    True, with the short ways on and every job result given bare to ``decide_result``;
    ``renewed``, every event decided in one working area renewed for each (one per state
    loaded)."""
    outcomes: list[Outcome] = []
    runs: list[dict[str, Any]] = []

    def record(sim: Any, _fed: Any, out: Outcome) -> None:
        outcomes.append(out)
        runs.append(sim.run.to_dict())

    sim = simulate(data, wf, run_input, record)
    plan = Plan.build(wf)
    state = RunState(new_run(wf, sim.run_id, run_input))
    tx = Tx(plan, state, sim.log[0].now) if sim.log else None
    with ExitStack() as short_ways_off:
        if not short_ways:
            short_ways_off.enter_context(
                mock.patch.object(machine, "quick_start", lambda _tx: False))
            short_ways_off.enter_context(
                mock.patch.object(machine, "quick_result", lambda *_: False))
        for i, step in enumerate(sim.log):
            if step.kind == "reload":
                state = reloaded(state)
                tx = Tx(plan, state, step.now)
            event = step.event
            if renewed and tx is not None:
                tx.renew(step.now)
                again = decide_result_in(tx, event.result, event.output) if isinstance(
                    event, ResultReceived) else decide_in(tx, event)
            elif short_ways and isinstance(event, ResultReceived):
                again = decide_result(plan, state, event.result, event.output, step.now)
            else:
                again = decide(plan, state, event, step.now)
            what = f"event {i} ({step.kind} {_describe(step.event)})"
            assert repr(again.effects) == repr(outcomes[i].effects), sim.fail_text(
                f"{what}: effects differ")
            assert repr(again.rows) == repr(outcomes[i].rows), sim.fail_text(
                f"{what}: timeline rows differ")
            assert _changes(again) == _changes(outcomes[i]), sim.fail_text(
                f"{what}: changes differ")
            assert state.run.to_dict() == runs[i], sim.fail_text(f"{what}: runs differ")


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_short_way_decides_like_the_general_path(wf: Workflow, run_input: dict[str, Any],
                                                 data: Any) -> None:
    _replay_without_short_way(wf, run_input, data)


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(kinds=("worker", "worker", "worker", "gated", "for_each", "approval")),
       run_input=run_inputs(), data=st.data())
def test_short_way_decides_like_the_general_path_on_job_heavy_workflows(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    _replay_without_short_way(wf, run_input, data)


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(kinds=("worker", "worker", "worker", "gated", "for_each", "approval")),
       run_input=run_inputs(), data=st.data())
def test_a_bare_job_result_is_decided_like_its_event(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    _replay(wf, run_input, data, short_ways=True)


@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(kinds=("worker", "worker", "worker", "gated", "for_each", "approval")),
       run_input=run_inputs(), data=st.data())
def test_an_event_decided_in_a_renewed_working_area_is_decided_like_in_a_new_one(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    _replay(wf, run_input, data, short_ways=True, renewed=True)
