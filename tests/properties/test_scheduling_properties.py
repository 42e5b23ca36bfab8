"""Scheduling properties of the pure core (SPEC §3–§4): ``max_parallel`` and
``depends_on`` hold after every event of random runs (see ``sim_driver``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_checks import check_dependencies, check_max_parallel
from sim_driver import COMMON, examples, simulate
from strategies import run_inputs, workflows

from cordtrio.model import Workflow


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(kinds=("worker", "for_each", "gated")), run_input=run_inputs(),
       data=st.data())
def test_max_parallel_is_never_exceeded(wf: Workflow, run_input: dict[str, Any],
                                        data: Any) -> None:
    """SPEC §4: after every event, a for-each parent has at most ``max_parallel`` running
    children (when > 0), counting retries."""
    simulate(data, wf, run_input, check_max_parallel)



@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_no_step_starts_before_its_dependencies_succeeded(
    wf: Workflow, run_input: dict[str, Any], data: Any
) -> None:
    """SPEC §3: no step starts (or is dispatched) before all its ``depends_on`` succeeded;
    an ``on_error`` handler starts only once a step naming it failed (SPEC §7)."""
    simulate(data, wf, run_input, check_dependencies)
