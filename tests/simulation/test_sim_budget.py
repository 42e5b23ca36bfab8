"""No seed runs forever: a restarted engine that crashes while still opening wakes the
submitter once another engine opens, and a seed that would run on fails with invariant
``budget`` (virtual time, Trio task steps, CPU time) and says what it was waiting for."""

from __future__ import annotations

import itertools

import pytest
import trio

import cordtrio.testing.scenario as scenario
from cordtrio.cli import main
from cordtrio.testing import Budget, SimulationFailure, simulate


def _crashes_while_opening(trace: list[str]) -> bool:
    events = [line.split(" ", 1)[1] for line in trace]
    return any(a.startswith("engine restart") and b.startswith("!! engine crash")
               for a, b in itertools.pairwise(events))


def test_a_crash_while_a_restarted_engine_opens_loses_no_wakeup() -> None:
    """Crashes placed "right after a restart" hit an engine still opening (an old driver
    replaced the "engine ready" event without firing it, and the submitter waited
    forever): every seed finishes, and the situation occurs on several of them."""
    reached = [seed for seed in range(30)
               if _crashes_while_opening(simulate(seed, crash=3, budget=Budget(cpu=30.0)).trace)]
    assert len(reached) >= 3, reached


def test_the_command_finishes_with_three_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--seeds", "1", "--start", "35", "--crashes", "3",
                 "--max-cpu", "30"]) == 0
    assert "1 passed" in capsys.readouterr().out


def test_a_seed_out_of_steps_fails_with_a_clear_message() -> None:
    with pytest.raises(SimulationFailure) as caught:
        simulate(1, budget=Budget(steps=300))
    failure = caught.value
    assert failure.invariant == "budget"
    assert "Trio task steps > the budget of 300" in failure.detail
    assert "engines up" in failure.detail


def test_a_seed_out_of_virtual_time_fails_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stuck_submitter(sim: scenario.Sim) -> None:
        await trio.sleep_forever()  # a driver bug: the submitter never returns

    monkeypatch.setattr(scenario, "_submitter", stuck_submitter)
    with pytest.raises(SimulationFailure) as caught:
        simulate(2, bound=100, budget=Budget(virtual=50))
    failure = caught.value
    assert failure.invariant == "budget"
    assert "450 s of virtual time" in failure.detail
    assert "the submitter is still at work" in failure.detail
    assert failure.trace[-1].split()[0] == "450.000000"


def test_the_budget_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--max-cpu", "0"]) == 2
    assert "--max-cpu must be positive" in capsys.readouterr().err
