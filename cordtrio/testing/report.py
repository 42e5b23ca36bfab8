"""What a simulation hands back: ``SimulationReport`` when every invariant held,
``SimulationFailure`` (an ``AssertionError``) when one did not, and ``SimulationTotals`` to
add up many seeds (the ``cordtrio simulate`` summary, the CI batches)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimulationFailure", "SimulationReport", "SimulationTotals"]


class SimulationFailure(AssertionError):
    """An invariant was violated. ``seed``, ``invariant``, ``detail`` and ``trace_tail`` say
    which and where; ``trace`` is the whole trace; ``simulate(seed)`` with the same arguments
    reproduces it (``reproduce`` says how, in words or as a command)."""

    def __init__(self, seed: int, invariant: str, detail: str, trace_tail: Sequence[str],
                 trace: Sequence[str] = (), *, reproduce: str = "") -> None:
        self.seed = seed
        self.trace = list(trace)
        self.invariant = invariant
        self.detail = detail
        self.trace_tail = list(trace_tail)
        self.reproduce = reproduce or f"simulate({seed}, ...) (same arguments)"
        self._args = (seed, invariant, detail, list(trace_tail), list(trace))
        tail = "\n".join(f"    {line}" for line in self.trace_tail)
        super().__init__(
            f"simulation seed={seed}: invariant '{invariant}' violated: {detail}\n"
            f"  reproduce with {self.reproduce}\n"
            f"  last {len(self.trace_tail)} trace lines:\n{tail}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (it crosses processes in ``batch.simulate_seeds``)."""
        return (_failure, (*self._args, self.reproduce))


def _failure(seed: int, invariant: str, detail: str, tail: list[str], trace: list[str],
             reproduce: str) -> SimulationFailure:
    return SimulationFailure(seed, invariant, detail, tail, trace, reproduce=reproduce)


@dataclass
class SimulationReport:
    """What a green simulation did."""

    seed: int
    runs: int
    steps_dispatched: int
    faults_injected: dict[str, int]
    virtual_time: float
    real_time: float
    trace_hash: str
    statuses: dict[str, int] = field(default_factory=dict)
    engine_restarts: int = 0
    trace: list[str] = field(repr=False, default_factory=list)
    situations: dict[str, int] = field(default_factory=dict)
    """How often the oracle saw each interesting situation (``oracle.SITUATIONS``)."""
    reruns: int = 0
    """Runs made by rerunning a terminal run (not in ``runs``; in ``statuses``)."""

    def __str__(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_injected.items()) if v)
        return (f"seed {self.seed}: {self.runs} runs {self.statuses}, {self.steps_dispatched} "
                f"dispatches, faults [{faults or 'none'}], {self.engine_restarts} engine "
                f"restarts, {self.virtual_time:.1f}s virtual in {self.real_time:.3f}s, "
                f"trace {self.trace_hash[:12]}")


@dataclass
class SimulationTotals:
    """Sums over many ``SimulationReport``\\ s (``add`` each one)."""

    scenarios: int = 0
    runs: int = 0
    steps_dispatched: int = 0
    engine_restarts: int = 0
    virtual_time: float = 0.0
    real_time: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    situations: Counter[str] = field(default_factory=Counter)

    def add(self, report: SimulationReport) -> None:
        self.scenarios += 1
        self.runs += report.runs
        self.steps_dispatched += report.steps_dispatched
        self.engine_restarts += report.engine_restarts
        self.virtual_time += report.virtual_time
        self.real_time += report.real_time
        self.faults.update({k: v for k, v in report.faults_injected.items() if v})
        self.statuses.update(report.statuses)
        self.situations.update(report.situations)

    def merge(self, other: SimulationTotals) -> None:
        """Add the sums of ``other`` (another part of the same batch)."""
        self.scenarios += other.scenarios
        self.runs += other.runs
        self.steps_dispatched += other.steps_dispatched
        self.engine_restarts += other.engine_restarts
        self.virtual_time += other.virtual_time
        self.real_time += other.real_time
        self.faults.update(other.faults)
        self.statuses.update(other.statuses)
        self.situations.update(other.situations)

    @property
    def rate(self) -> float:
        """Scenarios per second of real time."""
        return self.scenarios / self.real_time if self.real_time > 0 else 0.0

    def __str__(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        statuses = dict(sorted(self.statuses.items()))
        return (f"{self.scenarios} scenarios, {self.runs} runs {statuses}, "
                f"{self.steps_dispatched} dispatches, {self.engine_restarts} engine restarts, "
                f"faults [{faults or 'none'}], {self.virtual_time:.0f}s virtual in "
                f"{self.real_time:.1f}s ({self.rate:.1f} scenarios/s)")
