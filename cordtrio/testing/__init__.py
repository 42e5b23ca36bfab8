"""Testing tools for cordtrio users: test doubles and deterministic simulation.

Test doubles:

- ``TrioWallClock``: wall-clock timestamps that follow Trio's clock, so under
  ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``)
  timestamps and timers agree while hours of backoff pass instantly.
- ``PlainBus``: any bus behind the plain ``Bus`` port (no job queues, no callbacks).
- ``RecordingBus``: wraps any bus and records every published packet.

Simulation (see ``docs/testing.md``):

- ``run_under_faults(workflow, handlers, seed=..., faults="light")``: your workflow and
  handlers under bus faults, store failures, worker failures/hangs/crashes and engine
  crashes, in virtual time, with invariants checked on every event.
- ``simulate(seed, ...)`` → ``SimulationReport`` (raises ``SimulationFailure``);
  ``SimulationTotals`` adds reports up. ``store="fakeredis"`` runs on the Redis store;
  ``engines=2`` runs two engines over one store (run leases). Modules: ``scenario`` (what
  runs; its ``state`` and ``drivers``), ``observed`` (the backends as the engines see
  them), ``invariants`` (what is checked), ``trace`` (what is recorded), ``report``
  (what comes back), ``simulation`` (the entry points), ``oracle`` (the outcome oracle),
  ``mix`` (a seed's faults), ``cuts`` (smaller workflows), ``shrink`` (a failing seed
  made minimal), ``batch`` (many seeds over processes), ``mutations`` (the mutation
  check, ``python -m cordtrio.testing.mutations``). ``cordtrio simulate`` runs many seeds
  from the command line.
- Building blocks: ``FaultyBus`` / ``open_faulty_bus`` / ``FaultProfile``, ``FlakyStore`` /
  ``FlakyLeaseStore`` / ``flaky_store``,
  ``SimulatedWorker`` / ``WorkerPool``, ``random_workflow`` / ``random_run_input``.
- Hypothesis strategies: ``cordtrio.testing.strategies`` (imported separately; needs
  ``hypothesis``).
"""

from __future__ import annotations

from ._recording import PlainBus, Published, RecordingBus, TrioWallClock
from .faults import FaultProfile, FaultyBus, SubjectFaults, open_faulty_bus, resolve_profile
from .generate import random_run_input, random_workflow
from .invariants import INVARIANTS
from .report import SimulationFailure, SimulationReport, SimulationTotals
from .simulation import (
    FAULT_PRESETS,
    LEASE_STORES,
    STORES,
    Budget,
    first_failing_seed,
    run_under_faults,
    simulate,
)
from .store_faults import FlakyLeaseStore, FlakyStore, flaky_store
from .workers import SimulatedFailure, SimulatedWorker, WorkerPool, simulated_handler

__all__ = [
    "FAULT_PRESETS",
    "INVARIANTS",
    "LEASE_STORES",
    "STORES",
    "Budget",
    "FaultProfile",
    "FaultyBus",
    "FlakyLeaseStore",
    "FlakyStore",
    "PlainBus",
    "Published",
    "RecordingBus",
    "SimulatedFailure",
    "SimulatedWorker",
    "SimulationFailure",
    "SimulationReport",
    "SimulationTotals",
    "SubjectFaults",
    "TrioWallClock",
    "WorkerPool",
    "first_failing_seed",
    "flaky_store",
    "open_faulty_bus",
    "random_run_input",
    "random_workflow",
    "resolve_profile",
    "run_under_faults",
    "simulate",
    "simulated_handler",
]
