"""The invariant checks must actually catch a broken core (mutation checks): each test
patches one decision of ``cordtrio.core`` the way a plausible bug would, and asserts that a
bounded number of seeds finds it, with the right invariant. (The big green batches are in
``test_sim_batch.py``.)"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

import cordtrio.core.fanout as fanout
import cordtrio.core.machine as machine
import cordtrio.core.ready as ready
import cordtrio.core.results as results
from cordtrio.model import RunStatus, Step, StepStatus
from cordtrio.testing import SimulatedWorker, SimulationFailure, simulate


def _first_failure(seeds: range, **options: Any) -> SimulationFailure:
    for seed in seeds:
        try:
            simulate(seed, **options)
        except SimulationFailure as failure:
            return failure
    pytest.fail(f"no seed in {seeds} caught the mutation")


FLAKY = SimulatedWorker(latency=(0.01, 2.0), fail_rate=0.6)


def test_mutation_extra_retry_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_too_many(retry: Any, attempts: int) -> bool:
        return retry is not None and retry.max_retries > 0 and attempts <= retry.max_retries + 1

    monkeypatch.setattr(results, "retry_allowed", one_too_many)
    failure = _first_failure(range(40), worker=FLAKY)
    assert failure.invariant == "attempts", failure
    assert f"seed={failure.seed}" in str(failure)
    assert "max_retries + 1" in str(failure)


def test_mutation_fanout_over_max_parallel_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original: Callable[..., None] = fanout.pump_fanout

    def one_more(tx: Any, step: Step, parent: Any) -> None:
        if step.max_parallel > 0:
            step = dataclasses.replace(step, max_parallel=step.max_parallel + 1)
        original(tx, step, parent)

    monkeypatch.setattr(fanout, "pump_fanout", one_more)
    monkeypatch.setattr(ready, "pump_fanout", one_more)
    failure = _first_failure(range(40), faults="none", crash=False)
    assert failure.invariant == "max_parallel", failure
    assert "max_parallel" in str(failure)


def test_mutation_dispatch_before_dependencies_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def deps_started(tx: Any, step: Step) -> bool:
        return all(dep in tx.run.steps for dep in step.depends_on)

    monkeypatch.setattr(ready, "_deps_succeeded", deps_started)
    failure = _first_failure(range(40), faults="none", crash=False)
    assert failure.invariant == "dependencies", failure


def test_mutation_late_result_changes_a_terminal_run_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bug: a job result arriving after its run failed (for an attempt the run's end
    cancelled) is applied anyway, re-opening the finished run."""
    original = results.apply_result

    def late_results_reopen(tx: Any, result: Any, output: Any) -> bool:
        parsed = results.parse_job_id(result.job_id)
        if parsed is not None and parsed[0] == tx.run.id and tx.run.status.is_terminal:
            found = results.locate(tx, parsed[1])
            if (found is not None and found[1].job_id == result.job_id
                    and found[1].status == StepStatus.CANCELLED):
                found[1].status = StepStatus.RUNNING
                tx.run.status = RunStatus.RUNNING
        return original(tx, result, output)

    monkeypatch.setattr(machine, "apply_result", late_results_reopen)
    failure = _first_failure(range(40), worker=FLAKY, crash=False)
    assert failure.invariant == "terminal_stable", failure
    # (failed, or cancelled by a cancel request)
    assert re.search(r"was stored (failed|cancelled) and then changed", failure.detail)


def test_failure_message_is_readable() -> None:
    failure = SimulationFailure(9, "attempts", "s1 attempted 4 times", ["0.0 a", "1.5 b"])
    text = str(failure)
    assert "seed=9" in text and "'attempts'" in text and "1.5 b" in text
    assert "simulate(9" in text


# ------------------------------------------------------------ engine bugs it found
# Seeds on which the simulation found engine bugs, now fixed: a crash between writing a
# batch's run changes and its timeline lost the timeline events (the store now writes both
# in one atomic save_run_changes), and a re-submit with the same idempotency key returned a
# created-but-never-started run without starting it (submit now starts it). The seeds
# reproduce the scenario with this version of the simulation.
TIMELINE_GAP_SEED = 3
PENDING_RUN_SEED = 139
# A hard engine crash (its store handle cut) between claiming an idempotency key and
# creating the run left the key naming a run that never existed; the retried submit
# returned that id (lost_run). submit now creates the run under the claimed id.
DANGLING_KEY_SEED = 389


def test_a_crash_between_state_and_timeline_writes_loses_nothing() -> None:
    simulate(TIMELINE_GAP_SEED)


def test_a_resubmitted_run_that_never_started_is_started() -> None:
    simulate(PENDING_RUN_SEED)


def test_a_crash_between_claiming_a_key_and_creating_the_run_loses_nothing() -> None:
    simulate(DANGLING_KEY_SEED, faults="heavy")
    simulate(5, engines=2, faults="heavy", crash=2)
