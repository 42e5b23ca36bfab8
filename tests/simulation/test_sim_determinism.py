"""Bit-for-bit determinism of ``cordtrio.testing.simulate``: the same seed gives the same
trace (hash), different seeds give different traces, in this process and in another one
with a different string-hash seed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cordtrio.testing import simulate

SEEDS = (0, 3, 7, 41, 139, 1234)


@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_same_trace(seed: int) -> None:
    first = simulate(seed)
    second = simulate(seed)
    assert first.trace == second.trace
    assert first.trace_hash == second.trace_hash
    assert first.virtual_time == second.virtual_time
    assert first.faults_injected == second.faults_injected


def test_same_seed_same_trace_without_faults() -> None:
    a = simulate(5, faults="none", crash=False)
    b = simulate(5, faults="none", crash=False)
    assert a.trace_hash == b.trace_hash
    assert not any(a.faults_injected.values())
    assert a.engine_restarts == 0


def test_different_seeds_differ() -> None:
    hashes = {simulate(seed).trace_hash for seed in SEEDS}
    assert len(hashes) == len(SEEDS)


def test_trace_hash_is_sha256_of_the_trace() -> None:
    import hashlib

    report = simulate(3)
    text = "".join(line + "\n" for line in report.trace)
    assert hashlib.sha256(text.encode()).hexdigest() == report.trace_hash
    assert all(line.split(" ", 1)[0].replace(".", "").isdigit() for line in report.trace)


def test_same_trace_in_another_process() -> None:
    """Nothing in the trace depends on str hashing (set order) or the process."""
    code = ("from cordtrio.testing import simulate; "
            "print(' '.join(simulate(s).trace_hash for s in (7, 41)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [simulate(7).trace_hash, simulate(41).trace_hash]
