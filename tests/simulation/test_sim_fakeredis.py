"""The simulation on the Redis store (``RedisStore``/``RedisPayloadStore`` over fakeredis,
behind the trio-asyncio bridge): engine crashes and recovery from Redis, invariants green,
and the same bit-for-bit determinism as on the memory store, across processes too."""

from __future__ import annotations

import os
import subprocess
import sys

import fakeredis  # noqa: F401  (a test dependency)
import pytest

from cordtrio.testing import SimulationTotals, simulate

SEEDS = range(24)
PROFILES = ("none", "light", "heavy")


def test_a_batch_of_seeds_on_fakeredis() -> None:
    totals = SimulationTotals()
    for seed in SEEDS:
        totals.add(simulate(seed, store="fakeredis", faults=PROFILES[seed % 3]))
    print(f"\nfakeredis: {totals}")
    assert totals.scenarios == len(SEEDS)
    assert totals.engine_restarts >= len(SEEDS) // 4  # recovery from Redis happened
    assert totals.faults["store_failure"] > 0 and totals.faults["drop"] > 0
    assert totals.statuses["succeeded"] > 0 and totals.statuses["failed"] > 0


@pytest.mark.parametrize("seed", (2, 5))
def test_same_seed_same_trace_on_fakeredis(seed: int) -> None:
    first = simulate(seed, store="fakeredis", faults="heavy")
    second = simulate(seed, store="fakeredis", faults="heavy")
    assert first.trace_hash == second.trace_hash
    assert first.trace == second.trace
    assert first.engine_restarts == second.engine_restarts


def test_same_trace_on_fakeredis_in_another_process() -> None:
    """Nothing in the Redis path (fakeredis' sets, the asyncio loop) depends on string
    hashing or the process."""
    code = ("from cordtrio.testing import simulate; print(' '.join(simulate(s, "
            "store='fakeredis', faults='heavy').trace_hash for s in (3, 5)))")
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert out == [simulate(s, store="fakeredis", faults="heavy").trace_hash for s in (3, 5)]


def test_unknown_store_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown store 'postgres'"):
        simulate(0, store="postgres")
