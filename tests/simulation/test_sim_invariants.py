"""Many seeds under faults (light profile, engine crashes on) must stay green; and the
invariant checks must actually catch a broken core (mutation checks)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import cordtrio.core.fanout as fanout
import cordtrio.core.ready as ready
import cordtrio.core.results as results
from cordtrio.model import Step
from cordtrio.testing import SimulatedWorker, SimulationFailure, simulate

SEEDS = range(200)


def test_many_seeds_under_light_faults_with_crashes() -> None:
    started = time.perf_counter()
    statuses: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    restarts = dispatched = 0
    for seed in SEEDS:
        report = simulate(seed, faults="light", crash=True)
        statuses.update(report.statuses)
        faults.update(report.faults_injected)
        restarts += report.engine_restarts
        dispatched += report.steps_dispatched
    elapsed = time.perf_counter() - started
    print(f"{len(SEEDS)} seeds in {elapsed:.1f}s ({len(SEEDS) / elapsed:.1f} seeds/s); "
          f"runs {dict(statuses)}; {dispatched} dispatches; {restarts} engine restarts; "
          f"faults {dict(faults)}")
    # the simulation really exercised what it claims to
    assert restarts >= len(SEEDS) // 4
    assert statuses["succeeded"] and statuses["failed"]
    for kind in ("drop", "duplicate", "reorder", "delay", "store_failure", "worker_fail",
                 "worker_hang", "worker_crash", "engine_crash"):
        assert faults[kind] > 0, kind


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


def test_a_crash_between_state_and_timeline_writes_loses_nothing() -> None:
    simulate(TIMELINE_GAP_SEED)


def test_a_resubmitted_run_that_never_started_is_started() -> None:
    simulate(PENDING_RUN_SEED)
