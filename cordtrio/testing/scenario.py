"""One simulated scenario, inside ``trio.run`` on a ``MockClock``: the backends, the engine
(crashed and reopened), simulated workers, a submitter and an approver, all observed.

``Scenario`` is a fully resolved configuration; ``play(sim)`` runs ``Sim(scenario)``, which
keeps the trace, the first violation if any, and what was observed. The backends as the
engines see them (observed, flaky, severed by a crash) are in ``observed``. ``simulate`` in
``cordtrio.testing.simulation`` is the public way in.

The store is an in-memory ``MemoryStore`` (``store="memory"``) or the real ``RedisStore``
over ``fakeredis`` (``store="fakeredis"``; no server, fine under the mock clock), wrapped
in a ``FlakyStore`` that fails writes and reports every successful one. The store outlives
engine crashes, as a database outlives the processes that use it. On the memory store the
engines use its run leases (multi-engine mode; ``engines`` > 1 share the store). Over
fakeredis they do not: fakeredis measures TTLs on the wall clock, not the mock clock, and
its blocking ``BLPOP`` (the lease wake-ups) blocks the whole thread in real time, which
breaks both determinism and speed; the engine then runs single-engine mode.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ..backends.job_queues import WORKER_LOST
from ..backends.memory import MemoryBus
from ..client import Client
from ..clock import TrioWallClock
from ..engine.leases import DEFAULT_LEASE_TTL
from ..engine.supervisor import Engine, open_engine
from ..errors import CordtrioError, StoreError
from ..model import StepStatus, StepType, TimelineEvent, Workflow, WorkflowRun
from ..ports import TIMELINE_CAP, PayloadStore, RunLeases, Store
from ..protocol import BusPacket, JobRequest, JobResult
from ..worker import Handler
from .faults import FaultProfile, FaultyBus, open_faulty_bus
from .generate import WORKER_TOPIC
from .invariants import Invariants
from .observed import STORES, ObservedStore, Severable, observed_store, open_storage
from .oracle import Oracle
from .trace import all_step_runs, packet_line, saved_line, timeline_lines, violation_detail
from .workers import SimulatedWorker, WorkerPool

__all__ = ["LEASE_STORES", "STORES", "Budget", "BudgetWatch", "Scenario", "Sim", "play"]

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


class _ObservedMemoryBus(MemoryBus):
    """The ``MemoryBus`` under the scenario, observed as packets enter it (a subscriber of
    every subject would cost a task step per packet): each packet is traced and checked
    (``Sim.on_packet``) as it is published. The results the bus publishes itself (a job
    whose workers were all lost, ``WORKER_LOST``) reach the oracle this way too, before
    any subscriber has them, as results published through the ``FaultyBus`` do."""

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self._sim = sim

    async def publish(self, subject: str, packet: BusPacket) -> None:
        p = packet.payload
        if isinstance(p, JobResult) and p.error_code == WORKER_LOST:
            self._sim.on_publish(subject, packet)
        self._sim.on_packet(subject, packet)
        await super().publish(subject, packet)


def job_topics(workflows: Sequence[Workflow]) -> tuple[str, ...]:
    topics: dict[str, None] = {}
    for wf in workflows:
        for step in wf.steps.values():
            if step.type not in ENGINE_STEP_TYPES:
                topics[step.topic or f"job.workflow.{wf.id}"] = None
    return tuple(topics)


async def play(sim: Sim) -> None:
    """The scenario (the ``trio.run`` entry point)."""
    sc = sim.sc
    clock = TrioWallClock(EPOCH)
    async with open_storage(sc.store, clock) as (inner, payloads):
        await _play(sim, clock, inner, payloads)


async def _play(sim: Sim, clock: TrioWallClock, inner: Store, payloads: PayloadStore) -> None:
    sc = sim.sc
    # fakeredis keeps TTLs on the wall clock and its BLPOP (the lease wake-ups) blocks the
    # thread in real time: over it the engine runs single-engine mode (no leases)
    sim.leased = isinstance(inner, RunLeases) and sc.store in LEASE_STORES
    if sim.leased and sc.engines > 1:
        # half the seeds: a short lease TTL; a third: restarts slower than it, so another
        # engine takes the crashed engine's runs over before it comes back
        if sim.rng_crashes.random() < 0.5:
            sim.lease_ttl = sim.rng_crashes.uniform(2.0, 8.0)
        sim.slow_restarts = sim.rng_crashes.random() < 0.35
    if sim.leased:
        sim.oracle.lease_ttl = sim.lease_ttl
    bus = _ObservedMemoryBus(sim)
    for wf in sc.workflows:
        await inner.save_workflow(wf)
    topics = job_topics(sc.workflows) or (WORKER_TOPIC,)
    pool = WorkerPool(sc.worker, sim.rng_workers, handlers=sc.handlers, topics=topics,
                      workers=sc.workers, listener=sim.on_worker)
    t0 = trio.current_time()
    with trio.CancelScope() as root:
        sim.root = root
        async with (
            open_faulty_bus(bus, sim.rng_bus, profile=sc.profile,
                            on_fault=sim.on_fault, on_publish=sim.on_publish) as fbus,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(pool.run, fbus, payloads)
            for k in range(sc.engines):
                await nursery.start(_engine_loop, sim, f"e{k}", inner, fbus, payloads, clock)
            nursery.start_soon(_approver, sim)
            nursery.start_soon(_crasher, sim, t0)
            nursery.start_soon(_partitioner, sim, t0, fbus)
            if sim.leased and sc.operator:
                # the Client's own view of the store: flaky and observed, never severed
                sim.client = Client(observed_store(sim, inner), clock=clock, new_id=sim.new_id)
                sim.client_share = sim.rng_ops.choice((0.0, sim.rng_ops.uniform(0.2, 0.8)))
            nursery.start_soon(_operator, sim, t0)
            nursery.start_soon(_virtual_budget, sim, t0)
            await _submitter(sim)
            sim.submitting_done = True
            sim.check_done()
            with trio.move_on_at(t0 + sc.horizon):
                await sim.idle.wait()
                # what the last writes started (cancels of a cancelled run's jobs) goes on
                await trio.sleep(IDLE_SETTLE)
            # Faults stop: the system must now converge.
            sim.faults_on = False
            sim.line("-- faults stop")
            fbus.stop()
            for view in sim.store_views.values():
                view.stop()
            pool.calm()
            if not sim.engine_ready.is_set():
                await sim.engine_ready.wait()
            until = trio.current_time() + sc.bound
            while not sim.all_done.is_set() and trio.current_time() < until:
                with trio.move_on_at(min(until, trio.current_time() + 60.0)):
                    await sim.all_done.wait()
                sim.oracle.overdue(trio.current_time())  # a timer that never fires
                if sim.failure is not None:
                    return
            if not sim.all_done.is_set():
                if await _lost_runs(sim, inner):
                    return
                stuck = sim.stuck()
                what = (f"{len(stuck)} run(s) not terminal {sc.bound:g}s after faults "
                        f"stopped: {', '.join(stuck[:10])}{_hint(sc)}")
                first = next(r for r in sim.accepted if not (
                    (v := sim.check.latest.get(r)) is not None and v.status.is_terminal))
                target, _, job = (sim.last_open.get(first) or [("", "", "")])[0]
                sim.fail("liveness", violation_detail(sim.trace, first, target, job, what))
            else:
                sim.line("-- all runs terminal")
                await _final_checks(sim, inner)
            nursery.cancel_scope.cancel()


async def _crasher(sim: Sim, t0: float) -> None:
    """Crash an engine ``sc.crashes`` times during the first 85 % of the horizon, the k-th
    crash within the k-th of as many equal windows. Each crash has a mode drawn from the
    seed: ``time`` (the first trace event from a virtual time drawn in the window: the
    engine is cut mid-operation), ``timer`` (soon after a stored run starts waiting for a
    retry backoff or a delay) or, from the second crash on, ``restart`` (as a crashed
    engine reopens, often before its recovery is done). A crash whose trigger has not come
    by the end of its window happens then, so every planned crash happens."""
    sc = sim.sc
    rng = sim.rng_crashes
    try:
        await _crashes(sim, t0, sc, rng)
    finally:
        sim.crashes_done = True
        sim.check_idle()


async def _crashes(sim: Sim, t0: float, sc: Scenario, rng: random.Random) -> None:
    if sc.crashes < 1:
        return
    window = 0.85 * sc.horizon / sc.crashes
    for i in range(sc.crashes):
        start, end = t0 + i * window, t0 + (i + 1) * window
        mode = rng.choice(("time", "timer", "restart") if i else ("time", "timer"))
        due = rng.uniform(start, max(start, end - 5.0))
        if mode != "restart":  # "restart" is armed at once: the engine may reopen soon
            await trio.sleep_until(max(start, trio.current_time()))
        sim.crashed = trio.Event()
        sim.crash_target = ""
        sim.crash_mode = mode
        sim.crash_due = max(due, trio.current_time()) if mode == "time" else math.inf
        with trio.move_on_at(max(end, trio.current_time() + 5.0)):
            await sim.crashed.wait()
        if not sim.crashed.is_set():  # its trigger never came: crash now
            sim.crash_mode = ""
            while not sim.engine_scopes:
                await trio.sleep(0.5)
            sim.crash()


async def _partitioner(sim: Sim, t0: float, bus: FaultyBus) -> None:
    """Cut the network between engines and workers ``sc.partition`` of the horizon, in
    one to three partitions during its first 85 %, the k-th within the k-th of as many
    equal windows (``FaultyBus.cut``: jobs and results wait, cancels are lost)."""
    sc = sim.sc
    if sc.partition <= 0:
        return
    rng = random.Random(f"cordtrio-sim:{sc.seed}:partitions")
    count = rng.randint(1, 3)
    window = 0.85 * sc.horizon / count
    length = min(sc.partition * sc.horizon / count, window)
    for i in range(count):
        await trio.sleep_until(t0 + i * window + rng.uniform(0.0, window - length))
        if not sim.faults_on:
            return
        sim.line(f"-- partition: engines cut off from workers for {length:.1f}s")
        bus.cut()
        await trio.sleep(length)
        if bus.partitioned:
            held = bus.held_by_partition
            bus.heal()
            sim.line(f"-- partition healed ({held} job(s) and result(s) delivered)")
            if held:
                sim.oracle.note("partition")


async def _virtual_budget(sim: Sim, t0: float) -> None:
    """Fail the seed (``budget``) if it is still going ``budget.virtual`` seconds after
    ``horizon + bound``: the liveness check should have ended it by then."""
    sc = sim.sc
    limit = sc.horizon + sc.bound + sc.budget.virtual
    await trio.sleep_until(t0 + limit)
    sim.over_budget(f"{limit:g} s of virtual time (horizon {sc.horizon:g} s + bound "
                    f"{sc.bound:g} s + {sc.budget.virtual:g} s)")


async def _lost_runs(sim: Sim, inner: Store) -> bool:
    """Fail ``lost_run`` if a run whose submit returned never reached the store (a more
    precise diagnosis than ``liveness`` for a run that cannot finish)."""
    for rid in sim.accepted:
        if rid in sim.check.latest:
            continue
        try:
            await inner.get_run(rid)
        except CordtrioError:
            sim.fail("lost_run", f"submit returned run {rid}, but the store has no such run")
            return True
    return False


def _hint(sc: Scenario) -> str:
    bare = [f"{wf.id}/{s.id}" for wf in sc.workflows for s in wf.steps.values()
            if s.type not in ENGINE_STEP_TYPES and s.timeout_sec <= 0]
    if not bare:
        return ""
    return (f" (hint: a job step without timeout_sec runs as long as its handler does; a "
            f"handler that never returns, in a worker that stays alive, keeps it running: "
            f"{', '.join(bare[:5])})")


async def _engine_loop(sim: Sim, name: str, inner: Store, bus: Any,
                       payloads: PayloadStore, clock: TrioWallClock, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Engine ``name``: open, run until crashed, stay down a while, reopen (recovering)
    under a new engine id, as a restarted process would. Each incarnation reaches the
    store and the bus through ``Severable`` handles that its crash cuts."""
    incarnation = 0
    started = False
    label = f" {name}" if sim.sc.engines > 1 else ""
    while True:
        owner = f"sim-{name}-{incarnation}"

        def dispatched(run_id: str, target: str, job_id: str, owner: str = owner) -> None:
            sim.on_dispatched(run_id, target, job_id, owner)

        options: dict[str, Any] = ({"engine_id": owner, "lease_ttl": sim.lease_ttl}
                                   if sim.leased else {})
        store_handle = Severable(inner, StoreError, "store")
        bus_handle = Severable(bus, ConnectionError, "bus")
        store = observed_store(sim, store_handle)
        sim.store_views[name] = store
        with trio.CancelScope() as scope:
            sim.engine_scopes[name] = scope
            sim.severs[name] = (store_handle, bus_handle)
            sim.line(("engine open" if incarnation == 0 else "engine restart (recovering)")
                     + label)
            sim.down_since.pop(name, None)
            if incarnation:
                sim.restarting(name)
            async with open_engine(store, bus_handle, payloads=payloads, clock=clock,
                                   new_id=sim.new_id, on_step_dispatched=dispatched,
                                   on_step_finished=sim.on_finished, **options) as engine:
                sim.engines[name] = engine
                sim.engine_ready.set()
                sim.oracle.engine_up(trio.current_time())
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep_forever()
        incarnation += 1
        sim.engines.pop(name, None)
        sim.engine_scopes.pop(name, None)
        # A new "engine ready" event only replaces one that fired: an incarnation that
        # crashed while still opening never set the current one, and whoever waits on it
        # must be woken by the next engine that does open.
        if not sim.engines and sim.engine_ready.is_set():
            sim.engine_ready = trio.Event()
        sim.engine_restarts += 1
        sim.line("engine down" + label)
        if sim.slow_restarts:
            await trio.sleep(sim.rng.uniform(sim.lease_ttl + 1.0, 2 * sim.lease_ttl + 10.0))
        else:
            await trio.sleep(sim.rng.uniform(0.1, 10.0))


async def _current_engine(sim: Sim) -> Engine:
    """An engine that is up (with several, a seeded choice)."""
    while not sim.engines:
        await sim.engine_ready.wait()
    names = sorted(sim.engines)
    return sim.engines[names[0] if len(names) == 1 else sim.rng.choice(names)]


async def _via(sim: Sim) -> tuple[str, Engine | Client]:
    """Who the driver goes through this time: the ``Client`` (its seeded share of the
    time, with run leases) or an engine that is up."""
    if sim.client is not None and sim.rng_ops.random() < sim.client_share:
        return " (client)", sim.client
    return "", await _current_engine(sim)


async def _submitter(sim: Sim) -> None:
    sc = sim.sc
    wf_ids = list(sim.workflows)
    for i in range(sc.runs):
        await trio.sleep(sim.rng.uniform(0.0, sc.horizon / max(2 * sc.runs, 1)))
        wf = sim.workflows[sim.rng.choice(wf_ids)]
        payload = sc.inputs(sim.rng, wf)
        key = f"sim-{sim.seed}-{i}"
        while True:
            how, api = await _via(sim)
            run_id: str | None = None
            with trio.move_on_after(60):
                try:
                    run_id = await api.submit(wf.id, payload, idempotency_key=key,
                                              triggered_by="simulation")
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"submit {key} failed{how}: {type(exc).__name__}")
            if run_id is not None:
                sim.accepted[run_id] = None
                sim.line(f"submit {key} accepted {run_id}{how}")
                break
            await trio.sleep(sim.rng.uniform(0.1, 2.0))


async def _operator(sim: Sim, t0: float) -> None:
    """During the horizon, now and then: cancel a run that is not terminal
    (``cancel_rate``), or rerun a terminal one from its start or from one of its steps
    (``rerun_rate``), through the Client or an engine. The oracle hears of each cancel
    before it is asked for; a rerun joins the runs that must end."""
    sc = sim.sc
    latest = sim.check.latest
    if not (sim.cancel_rate or sim.rerun_rate):
        return
    rng = sim.rng_ops
    while trio.current_time() < t0 + 0.9 * sc.horizon:
        await trio.sleep(rng.uniform(5.0, 30.0))
        open_runs = [r for r in sim.accepted if (v := latest.get(r)) is not None
                     and not v.status.is_terminal]
        done = [r for r in sim.accepted if (v := latest.get(r)) is not None
                and v.status.is_terminal and r not in sim.reruns.values()]
        if open_runs and rng.random() < sim.cancel_rate:
            rid = rng.choice(open_runs)
            how, api = await _via(sim)
            sim.line(f"cancel {rid}{how}")
            sim.oracle.cancel_requested(rid)
            with trio.move_on_after(60):
                try:
                    await api.cancel_run(rid)
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"cancel {rid} failed{how}: {type(exc).__name__}")
        if done and rng.random() < sim.rerun_rate:
            await _rerun(sim, rng.choice(done))


async def _rerun(sim: Sim, rid: str) -> None:
    rng = sim.rng_ops
    wf = sim.workflows[sim.check.latest[rid].workflow_id]
    step = rng.choice(("", *sorted(wf.steps)))
    how, api = await _via(sim)
    new: str | None = None
    with trio.move_on_after(60):
        try:
            new = await api.rerun_from(rid, step)
            if isinstance(api, Engine):  # an engine's rerun_from creates, not starts
                sim.line(f"rerun {rid} from {step or 'the start'} created {new}")
                while True:
                    try:
                        await (await _current_engine(sim)).start_run(wf.id, new)
                        break
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"start {new} failed: {type(exc).__name__}")
                        await trio.sleep(rng.uniform(0.1, 2.0))
        except (CordtrioError, RuntimeError) as exc:
            sim.line(f"rerun {rid} failed{how}: {type(exc).__name__}")
            return
    if new is not None:
        sim.reruns[new] = rid
        sim.accepted[new] = None
        if sim.all_done.is_set():  # one more run that must end (it may have already)
            sim.all_done = trio.Event()
            sim.check_done()
        sim.oracle.note("rerun")
        sim.line(f"rerun {rid} from {step or 'the start'} accepted {new}{how}")


async def _approver(sim: Sim) -> None:
    latest = sim.check.latest
    while True:
        await sim.waiting.wait()
        await trio.sleep(sim.rng.uniform(1.0, 15.0))
        if not sim.engines:
            continue
        sim.waiting = trio.Event()
        for rid in list(latest):
            # a triggered approval handler waits in a *running* run; none in a terminal one
            for sid in latest[rid].waiting:
                ok = sim.rng.random() < sim.sc.approve_rate
                how, api = await _via(sim)
                sim.line(f"{'approve' if ok else 'reject'} {rid}:{sid}{how}")
                sim.oracle.approval(rid, sid, ok)
                with trio.move_on_after(60):
                    try:
                        await api.approve_step(rid, sid, ok)
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"approve {rid}:{sid} failed{how}: {type(exc).__name__}")
        if any(view.waiting for view in latest.values()):
            sim.waiting.set()  # something is still waiting (e.g. the engine was down)


async def _final_checks(sim: Sim, inner: Store) -> None:
    for rid in sim.accepted:
        try:
            run = await inner.get_run(rid)
        except CordtrioError:
            sim.fail("lost_run", f"accepted run {rid} is not in the store")
            return
        events = await inner.list_timeline_events(rid, TIMELINE_CAP)
        sim.check.final(run, events)
        sim.oracle.final(run, events)
        if sim.failure is not None:
            return
    sim.oracle.cancels_owed()
