"""Shrinking: a failing seed becomes a smaller scenario that fails the same way, the same
every time, and the command printed for it replays that failure."""

from __future__ import annotations

import shlex

import pytest

import cordtrio.core.finish as finish
from cordtrio.cli import main
from cordtrio.testing import SimulationFailure, first_failing_seed, simulate
from cordtrio.testing.cuts import cut_workflows
from cordtrio.testing.generate import random_workflow
from cordtrio.testing.shrink import rule_of, shrink
from cordtrio.testing.simulation import scenario_workflows


def _siblings_left_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``siblings_not_cancelled`` mutant: a failed fan-out leaves its children be."""
    monkeypatch.setattr(finish, "cancel_children", lambda *args, **kwargs: None)


def test_a_failing_seed_shrinks_to_a_smaller_one_that_fails_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _siblings_left_running(monkeypatch)
    failure = first_failing_seed(range(40), faults="light")
    assert failure is not None, "no seed caught it"
    shrunk = shrink(failure, {"faults": "light"})
    assert rule_of(shrunk.failure) == rule_of(failure) == "oracle/sibling_cancel"
    o = shrunk.options
    assert o["runs"] < 6 and o["crash"] == 0
    if o["operator"]:  # kept only when the failure needs the operator's commands (which
        # seed fails first, and how, follows Trio's scheduling of the workers' slots)
        simulate(failure.seed, **{**o, "operator": False})  # passes
    assert len(o["disabled"]) >= 5  # most of the faults are not needed
    before = sum(len(wf.steps) for wf in scenario_workflows(failure.seed))
    after = sum(len(wf.steps) for wf in scenario_workflows(
        failure.seed, keep=o["keep_workflows"], drop=o["drop_steps"]))
    assert after < before
    # the options replay it exactly; shrinking is deterministic
    with pytest.raises(SimulationFailure) as replay:
        simulate(failure.seed, **o)
    assert replay.value.trace == shrunk.failure.trace
    again = shrink(failure, {"faults": "light"})
    assert again.options == o and again.changes == shrunk.changes
    assert f"simulate({failure.seed}, " in shrunk.call() and "runs=" in shrunk.call()
    flags = shrunk.flags()
    assert flags[:4] == ["--runs", str(o["runs"]), "--crashes", "0"]
    assert ("--no-operator" in flags) == (not o["operator"])
    assert flags.count("--no-fault") == len(o["disabled"])


def test_the_command_line_prints_a_minimal_replay_command_that_fails_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _siblings_left_running(monkeypatch)
    assert main(["simulate", "--seeds", "40", "--faults", "heavy", "--trace-lines", "3"]) == 1
    out = capsys.readouterr().out
    assert "rule sibling_cancel" in out and "shrunk in " in out
    minimal = next(line for line in out.splitlines() if line.startswith("minimal: "))
    command = shlex.split(minimal.removeprefix("minimal: "))
    assert command[:5] == ["cordtrio", "simulate", "--seeds", "1", "--start"]
    for flag in ("--runs", "--crashes", "--no-fault", "--no-operator"):
        assert flag in command, flag
    shrunk_detail = out.split("shrunk in ", 1)[1].splitlines()[1].strip()
    # the printed command replays the shrunk failure, which cannot shrink further
    assert main(command[1:]) == 1
    again = capsys.readouterr().out
    assert shrunk_detail in again and "nothing could be removed" in again
    assert main([*command[1:], "--no-shrink"]) == 1
    assert "shrunk in" not in capsys.readouterr().out


def test_cut_workflows_keeps_and_drops() -> None:
    import random

    wf = random_workflow(random.Random(5), min_steps=6, max_steps=6, workflow_id="w")
    other = random_workflow(random.Random(6), workflow_id="v")
    dropped = next(iter(wf.steps))
    (cut,) = cut_workflows([wf, other], keep=["w"], drop=[f"w/{dropped}"])
    assert dropped not in cut.steps and len(cut.steps) == 5
    for step in cut.steps.values():
        assert dropped not in step.depends_on and step.on_error != dropped
    assert len(wf.steps) == 6  # the original is untouched
    with pytest.raises(ValueError, match="no step w/nope"):
        cut_workflows([wf], drop=["w/nope"])
    with pytest.raises(ValueError, match="no step left"):
        cut_workflows([wf], drop=[f"w/{sid}" for sid in wf.steps])
