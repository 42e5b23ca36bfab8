"""Retry properties of the pure core (SPEC §6): attempts stay within ``max_retries + 1``
and stale or duplicate results change nothing (see ``sim_driver``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_checks import check_attempts, check_stale_is_noop, redeliver_results
from sim_driver import COMMON, Weights, examples, simulate
from strategies import run_inputs, workflows

from cordtrio.model import Workflow


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_attempts_never_exceed_max_retries_plus_one(wf: Workflow, run_input: dict[str, Any],
                                                    data: Any) -> None:
    """SPEC §6: no step or child is attempted (or dispatched) more than
    ``max_retries + 1`` times. Runs here fail often, so retries are exercised."""
    simulate(data, wf, run_input, check_attempts, flakiness_choices=(6, 4, 8))



@settings(COMMON, max_examples=examples(150))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_stale_and_duplicate_results_change_nothing(wf: Workflow, run_input: dict[str, Any],
                                                    data: Any) -> None:
    """SPEC §6: a result for an attempt that is not the current running one (duplicates,
    late answers to cancelled or timed-out jobs, foreign or malformed ids) is ignored: no
    effects, no change. Every real result is also delivered twice."""
    simulate(data, wf, run_input, check_stale_is_noop, redeliver_results,
             weights=Weights(stale=300, cancel=1))
