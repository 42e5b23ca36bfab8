"""Many seeds at once: ``simulate_seeds(seeds, jobs=2, ...)`` spreads a batch over worker
processes and adds their reports up.

Seeds are independent and each is deterministic wherever it runs, so a batch split over
processes gives the same totals as one run in order; only its wall time changes. The
seeds are dealt out in chunks (``CHUNK``) as the processes become free, so a slow seed
does not hold the others up. Each process reports the CPU time it spent, and
``BatchResult.cpu`` adds them up (the CI batch holds it to a budget). The first failing
seed (in seed order) is raised as its ``SimulationFailure``, after every chunk has ended.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from .report import SimulationFailure, SimulationTotals
from .simulation import simulate

__all__ = ["CHUNK", "BatchResult", "simulate_seeds"]

CHUNK = 50
"""Seeds handed to a process at a time."""


@dataclass
class BatchResult:
    """The totals of a batch, its CPU time (all processes) and its wall time."""

    totals: SimulationTotals
    cpu: float
    wall: float


def _chunk(seeds: Sequence[int], two_engines_every: int, options: dict[str, Any]
           ) -> tuple[SimulationTotals, float, SimulationFailure | None]:
    started = time.process_time()
    totals = SimulationTotals()
    for seed in seeds:
        engines = 2 if two_engines_every and seed % two_engines_every == two_engines_every - 1 \
            else options.get("engines", 1)
        try:
            report = simulate(seed, **{**options, "engines": engines})
        except SimulationFailure as failure:
            return totals, time.process_time() - started, failure
        report.trace = []  # the totals do not need it; it need not cross processes
        totals.add(report)
    return totals, time.process_time() - started, None


def simulate_seeds(seeds: Sequence[int], *, jobs: int = 1, two_engines_every: int = 0,
                   **options: Any) -> BatchResult:
    """Run ``simulate(seed, **options)`` for every seed, over ``jobs`` processes (1: in
    this one), and add the reports up. ``two_engines_every=5``: every fifth seed (4, 9,
    ...) with two engines. Raises the first failing seed's ``SimulationFailure``."""
    started = time.perf_counter()
    seeds = list(seeds)
    chunks = [seeds[i:i + CHUNK] for i in range(0, len(seeds), CHUNK)]
    if jobs <= 1:
        results = []
        for chunk in chunks:
            results.append(_chunk(chunk, two_engines_every, options))
            if results[-1][2] is not None:
                break
    else:
        context = multiprocessing.get_context("spawn")  # no Trio state inherited
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            results = list(pool.map(_chunk, chunks, [two_engines_every] * len(chunks),
                                    [options] * len(chunks)))
    totals = SimulationTotals()
    cpu = 0.0
    for part, spent, failure in results:
        if failure is not None:
            raise failure
        cpu += spent
        totals.merge(part)
    return BatchResult(totals, cpu, time.perf_counter() - started)
