"""The state of one simulated scenario: ``Scenario`` (its resolved configuration),
``Budget`` and ``BudgetWatch`` (what a seed may spend), and ``Sim`` (the trace, the
invariant checker and the oracle, the engines up, what the drivers did). ``scenario``
plays it; ``drivers`` act on it."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ..client import Client
from ..engine.leases import DEFAULT_LEASE_TTL
from ..engine.supervisor import Engine
from ..model import StepStatus, StepType, TimelineEvent, Workflow, WorkflowRun
from ..protocol import BusPacket, JobRequest
from ..worker import Handler
from .faults import FaultProfile
from .invariants import Invariants
from .observed import ObservedStore, Severable
from .oracle import Oracle
from .trace import all_step_runs, packet_line, saved_line, timeline_lines
from .workers import SimulatedWorker

__all__ = ["CRASH_MODES", "ENGINE_STEP_TYPES", "EPOCH", "IDLE_SETTLE", "LEASE_STORES",
           "Budget", "BudgetWatch", "Scenario", "Sim"]

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
CRASH_MODES = {"timer": "with a pending timer", "restart": "right after a restart"}
"""How a planned engine crash is placed, besides at a drawn virtual time (see _crasher)."""
ENGINE_STEP_TYPES = (StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY)
IDLE_SETTLE = 30.0
"""Virtual seconds a seed goes on once idle (every run terminal, every planned crash
done, no rerun to come) before its faults stop, instead of idling to the horizon."""
LEASE_STORES = ("memory",)
"""Stores whose run leases the simulation uses (multi-engine mode, ``engines`` > 1)."""

InputsFn = Callable[[random.Random, Workflow], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation needs, resolved (see ``simulate`` for the meanings)."""

    seed: int
    workflows: tuple[Workflow, ...]
    inputs: InputsFn
    runs: int
    profile: FaultProfile
    worker: SimulatedWorker
    handlers: Mapping[str, Handler]
    store_fail_rate: float
    crashes: int
    horizon: float
    bound: float
    workers: int
    approve_rate: float
    store: str = "memory"
    engines: int = 1
    budget: Budget = field(default_factory=lambda: Budget())
    store_ambiguous_rate: float = 0.0
    store_read_fail_rate: float = 0.0
    operator: bool = True
    partition: float = 0.0


@dataclass(frozen=True)
class Budget:
    """What one seed may spend before it fails with invariant ``budget`` instead of
    running on: ``virtual`` seconds of virtual time beyond ``horizon + bound``, ``steps``
    Trio task steps, ``cpu`` seconds of real CPU time."""

    virtual: float = 600.0
    steps: int = 5_000_000
    cpu: float = 120.0


class BudgetWatch(trio.abc.Instrument):
    """Counts Trio task steps against the budget; every 1024 steps also reads the CPU
    clock. Over budget, the seed fails (``budget``), which cancels the scenario."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.steps = 0
        self.limit = sim.sc.budget.steps
        self.cpu0 = time.process_time()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if (self.steps & 1023 and self.steps <= self.limit) or self.sim.failure is not None:
            return
        budget = self.sim.sc.budget
        cpu = time.process_time() - self.cpu0
        if self.steps > budget.steps:
            self.sim.over_budget(f"{self.steps} Trio task steps > the budget of "
                                 f"{budget.steps}")
        elif cpu > budget.cpu:
            self.sim.over_budget(f"{cpu:.1f} s of CPU time > the budget of {budget.cpu:g} s")


class Sim:
    """State of one simulation (lives inside ``trio.run``): the trace, the invariant
    checker, the engine currently up, and what the drivers did."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.seed = sc.seed
        self.workflows = {wf.id: wf for wf in sc.workflows}

        def stream(name: str) -> random.Random:
            return random.Random(f"cordtrio-sim:{sc.seed}:{name}")

        self.rng = stream("driver")
        self.rng_bus = stream("bus")
        self.rng_store = stream("store")
        self.store_fail_rate = sc.store_fail_rate
        self.store_ambiguous_rate = sc.store_ambiguous_rate
        self.store_read_fail_rate = sc.store_read_fail_rate
        self.rng_workers = stream("workers")
        self.rng_ids = stream("ids")
        self.rng_keys = stream("keys")  # which submits go without an idempotency key
        self.trace: list[str] = []
        self.failure: tuple[str, str] | None = None
        self.check = Invariants(sc.workflows, self.fail, self.trace)
        self.oracle = Oracle(sc.workflows, self.fail, self.trace, EPOCH)
        self.root: trio.CancelScope | None = None
        self.rng_crashes = stream("crashes")
        # engine crashes, placed in virtual time (see _crasher): the mode of the next one,
        # the virtual time from which the next trace event crashes an engine, its target
        self.crash_mode = ""
        self.crash_due = math.inf
        self.crash_target = ""
        self.crashed = trio.Event()
        self.down_since: dict[str, float] = {}  # engines down (crashed, not yet back)
        self.lease_ttl = DEFAULT_LEASE_TTL
        self.slow_restarts = False  # restarts slower than the lease TTL (takeover first)
        self.engines: dict[str, Engine] = {}  # the engines up, by name (e0, e1...)
        self.engine_scopes: dict[str, trio.CancelScope] = {}
        self.engine_ready = trio.Event()  # set while at least one engine is up
        self.engine_restarts = 0
        self.leased = False  # the store has run leases: the engines run multi-engine mode
        self.store_views: dict[str, ObservedStore] = {}  # each engine's current store view
        self.severs: dict[str, tuple[Severable, Severable]] = {}
        self.faults_on = True
        self._id_seq = 0
        self.accepted: dict[str, None] = {}
        self.dispatches = 0
        self.all_done = trio.Event()
        self.crashes_done = False  # every planned engine crash has happened
        self.idle = trio.Event()  # see check_idle: the rest of the horizon would idle
        self.submitting_done = False
        self.waiting = trio.Event()  # set when a stored run has a step waiting
        # (step or child, status, job id) of each run's open steps, as last stored
        self.last_open: dict[str, list[tuple[str, str, str]]] = {}
        # the operator: a store-only Client (with run leases) used for a share of the
        # submits, approvals, cancels and reruns; how often runs are cancelled and rerun
        self.rng_ops = stream("operator")
        self.client: Client | None = None
        self.client_share = 0.0
        self.cancel_rate = self.rng_ops.choice((0.0, self.rng_ops.uniform(0.05, 0.4)))
        self.rerun_rate = self.rng_ops.choice((0.0, self.rng_ops.uniform(0.1, 0.5)))
        if not sc.operator:
            self.cancel_rate = self.rerun_rate = 0.0
        self.reruns: dict[str, str] = {}  # rerun run id -> the run it was made from

    # ------------------------------------------------------------------------ tracing

    def line(self, text: str) -> None:
        now = trio.current_time()
        self.trace.append(f"{now:.6f} {text}")
        if now >= self.crash_due and self.faults_on and self.engine_scopes:
            self.crash()
        elif (self.crash_mode == "timer" and self.crash_due == math.inf
              and self.oracle.timer_pending()):
            # a retry or delay timer is pending: crash soon, while it still is
            self.crash_due = now + self.rng_crashes.choice((0.0, self.rng_crashes.uniform(0, 2)))

    def crash(self) -> None:
        """Crash an engine now (the planned one if it is up): cancel it, cut its handles."""
        now = trio.current_time()
        names = sorted(self.engine_scopes)
        if self.crash_target in self.engine_scopes:
            name = self.crash_target
        else:
            name = names[0] if len(names) == 1 else self.rng_crashes.choice(names)
        self.trace.append(f"{now:.6f} !! engine crash"
                          + (f" {name}" if self.sc.engines > 1 else "")
                          + (f" ({CRASH_MODES[self.crash_mode]})"
                             if self.crash_mode in CRASH_MODES else ""))
        if self.crash_mode == "timer":
            self.oracle.note("crash with a pending timer")
        elif self.crash_mode == "restart":
            self.oracle.note("crash right after a restart")
        self.crash_due = math.inf
        self.crash_mode = ""
        self.crashed.set()
        self.down_since[name] = now
        self.oracle.engine_crashed(now)
        self.engine_scopes.pop(name).cancel()
        for handle in self.severs.pop(name, ()):
            handle.severed = True

    def restarting(self, name: str) -> None:
        """Engine ``name`` is reopening: a crash planned "right after a restart" is due."""
        if self.crash_mode == "restart" and self.crash_due == math.inf:
            self.crash_target = name
            self.crash_due = trio.current_time() + self.rng_crashes.choice(
                (0.0, self.rng_crashes.uniform(0, 2)))

    def fail(self, invariant: str, detail: str) -> None:
        if self.failure is None:
            self.line(f"!! VIOLATION {invariant}: {detail}")
            self.failure = (invariant, detail)
            if self.root is not None:
                self.root.cancel()

    def over_budget(self, what: str) -> None:
        """The seed ran out of its ``Budget``: fail it, saying what it was waiting for."""
        stuck = self.stuck()
        waiting = (f"submitted {len(self.accepted)} of {self.sc.runs} runs"
                   + ("" if self.submitting_done else " (the submitter is still at work)")
                   + f", engines up: {sorted(self.engines) or 'none'}, "
                   + (f"runs not terminal: {', '.join(stuck[:5])}" if stuck
                      else "every accepted run terminal"))
        self.fail("budget", f"seed {self.seed} ran out of budget: {what}; {waiting}")

    def new_id(self) -> str:
        self._id_seq += 1
        return f"run-{self._id_seq:03d}-{self.rng_ids.getrandbits(24):06x}"

    # --------------------------------------------------------------------- observers

    def on_saved(self, run: WorkflowRun) -> None:
        self.last_open[run.id] = [
            (sr.step_id, sr.status.value, sr.job_id) for _, sr in all_step_runs(run)
            if sr.status in (StepStatus.RUNNING, StepStatus.PENDING, StepStatus.WAITING)]
        self.line(saved_line(run))
        self.check.saved(run)
        self.oracle.saved(run, trio.current_time())
        if self.check.latest[run.id].waiting:
            self.waiting.set()
        self.check_done()

    def on_created(self, run: WorkflowRun) -> None:
        self.line(f"create {run.id} {run.workflow_id}")

    def on_timeline(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        for text in timeline_lines(run_id, events):
            self.line(text)
        self.oracle.timeline(run_id, events)

    def on_dispatched(self, run_id: str, target: str, job_id: str, owner: str = "") -> None:
        self.dispatches += 1
        self.line(f"hook dispatched {job_id}")
        self.check.dispatched(run_id, target, job_id)
        self.oracle.job_dispatched(job_id, trio.current_time())
        if owner and self.leased:
            self.check.acted(run_id, owner, f"dispatched {job_id} of", trio.current_time())

    def on_finished(self, run_id: str, step_id: str, status: Any) -> None:
        self.line(f"hook finished {run_id}:{step_id} {status.value}")

    def on_packet(self, subject: str, packet: BusPacket) -> None:
        self.line(f"bus {packet_line(subject, packet)}")
        self.oracle.published(subject, packet, trio.current_time())
        p = packet.payload
        if isinstance(p, JobRequest):
            self.check.job_sent(p.env.get("run_id", ""), p.env.get("step_id", ""), p.job_id)

    def on_publish(self, subject: str, packet: BusPacket) -> None:
        self.oracle.published(subject, packet, trio.current_time())

    def on_fault(self, kind: str, subject: str, packet: BusPacket) -> None:
        self.line(f"fault {kind} {packet_line(subject, packet)}")

    def on_store_fail(self, method: str, run_id: str) -> None:
        self.line(f"fault store {method} {run_id}")

    def on_store_fault(self, kind: str, method: str, key: str) -> None:
        """An ambiguous write (applied, reply lost) or a failed read."""
        self.line(f"fault store_{'ambiguous' if kind == 'ambiguous' else 'read_failure'} "
                  f"{method} {key}")
        if kind == "ambiguous":
            self.oracle.note("ambiguous write")

    def on_worker(self, what: str, detail: str) -> None:
        self.line(f"worker {what} {detail}")
        if what == "redelivered":
            self.oracle.note("redelivery")

    def check_done(self) -> None:
        latest = self.check.latest
        if self.submitting_done and all(
            (r := latest.get(rid)) is not None and r.status.is_terminal
            for rid in self.accepted
        ):
            self.all_done.set()
            self.check_idle()

    def check_idle(self) -> None:
        """Set ``idle`` once nothing the horizon still holds can matter: every run is
        terminal, every planned crash has happened, and no rerun can come."""
        if self.all_done.is_set() and self.crashes_done and not self.rerun_rate:
            self.idle.set()

    def stuck(self) -> list[str]:
        """The accepted runs not terminal, each with its open steps and their job ids
        (``run-001 (running: s2 running job run-001:s2@1, s3 waiting)``)."""
        latest = self.check.latest
        out = []
        for rid in self.accepted:
            view = latest.get(rid)
            if view is not None and view.status.is_terminal:
                continue
            steps = ", ".join(
                f"{sid} {status}" + (f" job {job}" if job else "")
                for sid, status, job in self.last_open.get(rid, ()))
            out.append(f"{rid} ({view.status.value if view else 'not stored'}"
                       + (f": {steps}" if steps else "") + ")")
        return out
