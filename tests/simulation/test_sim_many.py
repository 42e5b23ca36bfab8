"""``simulate_seeds``: a batch spread over processes adds up to what one process gets, and
its first failing seed comes back whole."""

from __future__ import annotations

import pytest

from cordtrio.testing import SimulationFailure
from cordtrio.testing.batch import simulate_seeds


def test_two_processes_add_up_to_one() -> None:
    seeds = range(30, 50)
    one = simulate_seeds(seeds, two_engines_every=5, faults="swarm")
    two = simulate_seeds(seeds, jobs=2, two_engines_every=5, faults="swarm")
    for totals in (one.totals, two.totals):
        assert totals.scenarios == 20
    a, b = one.totals, two.totals
    assert (a.runs, a.steps_dispatched, a.engine_restarts, a.virtual_time) == (
        b.runs, b.steps_dispatched, b.engine_restarts, b.virtual_time)
    assert (a.faults, a.statuses, a.situations) == (b.faults, b.statuses, b.situations)
    assert one.cpu > 0 and two.cpu > 0


def test_the_first_failing_seed_is_raised_with_its_trace() -> None:
    with pytest.raises(SimulationFailure) as caught:
        # 1.5 virtual seconds are too short for any run: every seed fails
        simulate_seeds(range(3, 6), jobs=2, faults="light", horizon=1.0, bound=0.5)
    assert caught.value.seed == 3 and caught.value.invariant == "liveness"
    assert caught.value.trace and "not terminal 0.5s after faults stopped" in str(caught.value)
