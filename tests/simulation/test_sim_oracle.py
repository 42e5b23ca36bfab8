"""The outcome oracle catches engine bugs the structural invariants miss, and names the
run, step, job, rule and trace lines; the mutation runner applies textual mutants to a
copy of the package and finds them."""

from __future__ import annotations

from typing import Any

import pytest

import cordtrio.core.finish as finish
import cordtrio.core.ready as ready
from cordtrio.model import Workflow
from cordtrio.testing import first_failing_seed
from cordtrio.testing.mutations import MUTANTS, apply_mutant, first_failure
from cordtrio.testing.oracle import expected_status


def test_siblings_left_running_by_a_failed_fan_out_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(finish, "cancel_children", lambda *args, **kwargs: None)
    failure = first_failing_seed(range(40))
    assert failure is not None, "no seed caught it"
    assert failure.invariant == "oracle"
    assert failure.detail.startswith("rule sibling_cancel: run run-")
    assert "fan-out failed while children" in failure.detail


def test_a_false_gate_that_fails_the_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ready.finish

    def fail_instead_of_skip(tx: Any, step_id: str, sr: Any, status: Any, **kw: Any) -> None:
        if kw.get("timeline") == "step_skipped":
            status = ready.StepStatus.FAILED
        original(tx, step_id, sr, status, **kw)

    monkeypatch.setattr(ready, "finish", fail_instead_of_skip)
    failure = first_failing_seed(range(20))
    assert failure is not None, "no seed caught it"
    assert failure.invariant == "oracle"
    assert "rule gate:" in failure.detail and "must be skipped" in failure.detail


def test_a_stale_result_that_is_accepted_is_caught_with_the_job_and_trace() -> None:
    stale = next(m for m in MUTANTS if m.name == "stale_result_accepted")
    caught = first_failure(stale, "heavy", 20, detail=True)
    assert caught["seeds"] is not None and caught["invariant"] == "oracle"
    detail = str(caught["detail"])
    # the first seed that catches it says why by one of the outcome rules: a result no
    # step was owed (justified), or a run status its steps do not give (run_status)
    assert detail.startswith(("rule justified: run run-", "rule run_status: run run-"))
    assert " s0" in detail or " step s" in detail  # the step named
    assert ":s" in detail and "@" in detail  # the job's id, in the rule or its trace
    assert "trace lines that led there:\n    #" in detail


def test_expected_status_follows_the_spec() -> None:
    from cordtrio.model import RunStatus, Step, StepRun, StepStatus, WorkflowRun

    wf = Workflow(id="w", steps={"a": Step(id="a", topic="t", on_error="h"),
                                 "b": Step(id="b", topic="t"), "h": Step(id="h", topic="t")})
    run = WorkflowRun(id="r", workflow_id="w")
    run.steps = {"a": StepRun(step_id="a", status=StepStatus.SUCCEEDED),
                 "b": StepRun(step_id="b", status=StepStatus.SUCCEEDED)}
    assert expected_status(wf, run) == RunStatus.SUCCEEDED  # untriggered handler ignored
    run.steps["a"].status = StepStatus.FAILED
    run.steps["h"] = StepRun(step_id="h", status=StepStatus.RUNNING)
    assert expected_status(wf, run) == RunStatus.RUNNING  # the handler still runs
    run.steps["h"].status = StepStatus.SUCCEEDED
    assert expected_status(wf, run) == RunStatus.FAILED
    assert expected_status(wf, run, {"a"}) == RunStatus.RUNNING  # cancelled by the end


def test_every_mutant_patches_the_engine_as_it_is(tmp_path: Any) -> None:
    import shutil
    from pathlib import Path

    import cordtrio

    for mutant in MUTANTS:
        copy = tmp_path / mutant.name / "cordtrio"
        shutil.copytree(Path(cordtrio.__file__).parent / "core", copy / "core")
        apply_mutant(mutant, copy)  # raises if the text is not there exactly once
        assert (copy / mutant.path).read_text() != (
            Path(cordtrio.__file__).parent / mutant.path).read_text()
    assert len({m.name for m in MUTANTS}) == len(MUTANTS) >= 8


def test_the_mutation_runner_catches_a_mutant_and_not_the_engine() -> None:
    gate = next(m for m in MUTANTS if m.name == "false_gate_fails")
    caught = first_failure(gate, "light", 10)
    assert caught["seeds"] is not None and caught["invariant"] == "oracle"
    assert caught["rule"] == "gate"
    clean = first_failure(None, "light", 3)
    assert clean["seeds"] is None
