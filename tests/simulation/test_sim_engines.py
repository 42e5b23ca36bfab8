"""Several engines over one store (multi-engine mode: run leases, fenced writes, takeover):
each engine crashes and restarts on its own, and the ``single_owner`` invariant checks that
a run is driven by one engine at a time. Crashes are hard: a crashed engine's handles on
the store and the bus are cut, so it can neither release its leases nor forward what it
held (they expire, and another engine takes the runs over)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cordtrio.backends.memory.leases as memory_leases
from cordtrio.engine.run_task import RunTask
from cordtrio.testing import SimulationFailure, SimulationTotals, simulate

SEEDS = range(100)


def test_two_engines_under_faults_with_crashes() -> None:
    totals = SimulationTotals()
    for seed in SEEDS:
        totals.add(simulate(seed, engines=2, faults="heavy" if seed % 2 else "light",
                            crash=2))
    print(f"\ntwo engines: {totals}")
    assert totals.engine_restarts >= len(SEEDS)
    assert totals.statuses["succeeded"] > 0 and totals.statuses["failed"] > 0


def test_two_engines_trace_lease_takeovers_and_stay_deterministic() -> None:
    first = simulate(4, engines=2, faults="heavy", crash=3)
    second = simulate(4, engines=2, faults="heavy", crash=3)
    assert first.trace_hash == second.trace_hash
    text = "\n".join(first.trace)
    assert "engine open e0" in text and "engine open e1" in text
    assert "!! engine crash e" in text
    # a run first driven by one incarnation is later taken by another
    owners: dict[str, set[str]] = {}
    for line in first.trace:
        parts = line.split(" ")
        if parts[1] == "lease" and parts[3] == "taken":
            owners.setdefault(parts[2], set()).add(parts[5])
    assert any(len(o) > 1 for o in owners.values()), owners


def test_two_engines_same_trace_in_another_process() -> None:
    code = ("from cordtrio.testing import simulate; "
            "print(simulate(4, engines=2, faults='heavy', crash=3).trace_hash)")
    env = {**os.environ, "PYTHONHASHSEED": "777"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()
    assert out == simulate(4, engines=2, faults="heavy", crash=3).trace_hash


def test_engines_need_the_memory_store() -> None:
    with pytest.raises(ValueError, match="engines=2 needs run leases"):
        simulate(0, engines=2, store="fakeredis")
    with pytest.raises(ValueError, match="engines must be at least 1"):
        simulate(0, engines=0)


def test_mutation_two_engines_drive_one_run_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: the store forgets to fence writes by lease, and a run task whose lease was
    lost keeps going. An engine whose renewals failed then writes a run another engine has
    taken over."""
    monkeypatch.setattr(memory_leases.MemoryRunLeases, "_check_fence",
                        lambda self, run_id, owner: None)
    monkeypatch.setattr(RunTask, "lease_lost", lambda self: None)
    for seed in range(40):
        try:
            simulate(seed, engines=2, faults="heavy", store_fail_rate=0.4, crash=2)
        except SimulationFailure as failure:
            assert failure.invariant == "single_owner", failure
            assert "lease" in failure.detail and "sim-e" in failure.detail
            return
    pytest.fail("no seed in range(40) caught two engines driving one run")
