"""The CI batch: 2,000 seeded scenarios under swarm faults (a fault mix drawn per seed,
one to three engine crashes per seed; every fifth seed with two engines) must stay green,
must really inject every kind of fault they claim to and reach every situation the oracle
counts, and must stay within its budget of ``CPU_BUDGET`` CPU-seconds, all processes
together (the batch takes about half of it on a quiet machine: the budget leaves room for
a loaded one, and a simulation that became twice as slow fails here). The seeds run over
``JOBS`` processes; wall and CPU time are printed (``pytest -s``)."""

from __future__ import annotations

from cordtrio.testing.batch import simulate_seeds
from cordtrio.testing.oracle import MULTI_ENGINE_SITUATIONS, SITUATIONS

SEEDS = range(2000)
JOBS = 2
"""Processes the seeds are spread over (``simulate_seeds``): CI machines have two cores."""
CPU_BUDGET = 180.0
"""CPU-seconds the 2,000 seeds may take (docs/testing.md says the same)."""
FAULT_KINDS = ("drop", "duplicate", "reorder", "delay", "store_failure", "store_ambiguous",
               "store_read_failure", "worker_fail", "worker_deny", "worker_hang",
               "worker_crash", "partition", "engine_crash")


def test_two_thousand_seeds_under_swarm_faults_with_crashes() -> None:
    batch = simulate_seeds(SEEDS, jobs=JOBS, two_engines_every=5, faults="swarm", crash=True)
    totals = batch.totals
    print(f"\n{totals} — wall {batch.wall:.1f}s over {JOBS} processes, cpu {batch.cpu:.1f}s "
          f"({len(SEEDS) / batch.cpu:.1f} seeds per cpu-second)")
    print(f"situations: {dict(totals.situations)}")
    assert totals.scenarios == len(SEEDS)
    assert batch.cpu <= CPU_BUDGET, (f"{len(SEEDS)} seeds took {batch.cpu:.1f} CPU-seconds "
                                     f"> the budget of {CPU_BUDGET:g}")
    # the simulation really exercised what it claims to
    assert totals.engine_restarts >= len(SEEDS)  # every seed crashes at least once
    for status in ("succeeded", "failed", "timed_out"):
        assert totals.statuses[status] > 0, status
    for kind in FAULT_KINDS:
        assert totals.faults[kind] > 0, kind
    # ... and reached the situations the outcome oracle is there to judge
    for situation in (*SITUATIONS, *MULTI_ENGINE_SITUATIONS):
        assert totals.situations[situation] > 0, situation
