"""Testing tools for cordtrio users: test doubles and deterministic simulation.

Test doubles:

- ``TrioWallClock``: wall-clock timestamps that follow Trio's clock, so under
  ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``)
  timestamps and timers agree while hours of backoff pass instantly.
- ``RecordingBus``: wraps any bus and records every published packet.

Simulation (see ``docs/testing.md``):

- ``run_under_faults(workflow, handlers, seed=..., faults="light")``: your workflow and
  handlers under bus faults, store failures, worker failures/hangs/crashes and engine
  crashes, in virtual time, with invariants checked on every event.
- ``simulate(seed, ...)`` → ``SimulationReport`` (raises ``SimulationFailure``).
- Building blocks: ``FaultyBus`` / ``open_faulty_bus`` / ``FaultProfile``, ``FlakyStore``,
  ``SimulatedWorker`` / ``WorkerPool``, ``random_workflow`` / ``random_run_input``.
- Hypothesis strategies: ``cordtrio.testing.strategies`` (imported separately; needs
  ``hypothesis``).
"""

from __future__ import annotations

from ._recording import Published, RecordingBus, TrioWallClock
from .faults import FaultProfile, FaultyBus, SubjectFaults, open_faulty_bus, resolve_profile
from .generate import random_run_input, random_workflow
from .simulation import (
    INVARIANTS,
    SimulationFailure,
    SimulationReport,
    run_under_faults,
    simulate,
)
from .store_faults import FlakyStore
from .workers import SimulatedFailure, SimulatedWorker, WorkerPool, simulated_handler

__all__ = [
    "INVARIANTS",
    "FaultProfile",
    "FaultyBus",
    "FlakyStore",
    "Published",
    "RecordingBus",
    "SimulatedFailure",
    "SimulatedWorker",
    "SimulationFailure",
    "SimulationReport",
    "SubjectFaults",
    "TrioWallClock",
    "WorkerPool",
    "open_faulty_bus",
    "random_run_input",
    "random_workflow",
    "resolve_profile",
    "run_under_faults",
    "simulate",
    "simulated_handler",
]
