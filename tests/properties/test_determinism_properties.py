"""Determinism properties of the pure core (SPEC §12): ``decide`` replays to the same
effects, and the stored form decides like the live state (see ``sim_driver``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_checks import check_reload_equivalent
from sim_driver import COMMON, _describe, _summarise, examples, new_run, reloaded, simulate
from strategies import run_inputs, workflows

from cordtrio.core.machine import decide
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState
from cordtrio.model import Workflow


@settings(COMMON, max_examples=examples(120))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_same_events_give_same_effects(wf: Workflow, run_input: dict[str, Any],
                                       data: Any) -> None:
    """SPEC §12: ``decide`` is a pure function: replaying the same events at the same times
    on a fresh copy of the workflow and run gives the same effects and the same run."""
    sim = simulate(data, wf, run_input)
    plan = Plan.build(workflow_copy(wf))
    state = RunState(new_run(wf, sim.run_id, run_input))
    for i, (step, effects, rows) in enumerate(zip(sim.log, sim.effect_log, sim.row_log,
                                                  strict=True)):
        if step.kind == "reload":
            state = reloaded(state)
        again = decide(plan, state, step.event, step.now)
        assert repr(again.rows) == repr(rows), sim.fail_text(
            f"event {i} ({step.kind} {_describe(step.event)}) gave different timeline rows")
        assert repr(again.effects) == repr(effects), sim.fail_text(
            f"event {i} ({step.kind} {_describe(step.event)}) gave different effects:\n"
            f"  first:  {_summarise(effects)}\n  second: {_summarise(again.effects)}"
        )
    assert state.run.to_dict() == sim.run.to_dict()


@settings(COMMON, max_examples=examples(80))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_stored_form_decides_like_the_live_state(wf: Workflow, run_input: dict[str, Any],
                                                 data: Any) -> None:
    """The fan-out indexes are derived data: deciding each event on the run as stored
    (``to_dict``/``from_dict``, indexes rebuilt lazily) gives the same effects and run as
    deciding it on the live state."""
    simulate(data, wf, run_input, check_reload_equivalent, snapshot=True)


def workflow_copy(wf: Workflow) -> Workflow:
    return Workflow.from_dict(wf.to_dict())
