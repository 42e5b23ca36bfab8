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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from ..backends.memory import MemoryBus
from ..clock import TrioWallClock
from ..engine.supervisor import Engine, open_engine
from ..errors import CordtrioError, StoreError
from ..model import StepType, TimelineEvent, Workflow, WorkflowRun
from ..ports import TIMELINE_CAP, PayloadStore, RunLeases, Store
from ..protocol import BusPacket, JobCancel, JobRequest, JobResult
from ..worker import Handler
from .faults import FaultProfile, open_faulty_bus
from .generate import WORKER_TOPIC
from .invariants import Invariants
from .observed import STORES, ObservedStore, Severable, observed_store, open_storage
from .trace import packet_line, saved_line, timeline_lines
from .workers import SimulatedWorker, WorkerPool

__all__ = ["LEASE_STORES", "STORES", "Scenario", "Sim", "play"]

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
ENGINE_STEP_TYPES = (StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY)
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
        self.rng_workers = stream("workers")
        self.rng_ids = stream("ids")
        self.trace: list[str] = []
        self.failure: tuple[str, str] | None = None
        self.check = Invariants(sc.workflows, self.fail)
        self.root: trio.CancelScope | None = None
        # crash points: trace line counts at which an engine is cancelled
        self.crash_at = sorted(self.rng.randint(5, max(6, 60 * sc.runs))
                               for _ in range(sc.crashes))
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
        self.submitting_done = False
        self.waiting = trio.Event()  # set when a stored run has a step waiting

    # ------------------------------------------------------------------------ tracing

    def line(self, text: str) -> None:
        self.trace.append(f"{trio.current_time():.6f} {text}")
        if (self.crash_at and len(self.trace) >= self.crash_at[0] and self.faults_on
                and self.engine_scopes):
            self.crash_at.pop(0)
            names = sorted(self.engine_scopes)
            name = names[0] if len(names) == 1 else self.rng.choice(names)
            self.trace.append(f"{trio.current_time():.6f} !! engine crash"
                              + (f" {name}" if self.sc.engines > 1 else ""))
            self.engine_scopes.pop(name).cancel()
            for handle in self.severs.pop(name, ()):
                handle.severed = True

    def fail(self, invariant: str, detail: str) -> None:
        if self.failure is None:
            self.line(f"!! VIOLATION {invariant}: {detail}")
            self.failure = (invariant, detail)
            if self.root is not None:
                self.root.cancel()

    def new_id(self) -> str:
        self._id_seq += 1
        return f"run-{self._id_seq:03d}-{self.rng_ids.getrandbits(24):06x}"

    # --------------------------------------------------------------------- observers

    def on_saved(self, run: WorkflowRun) -> None:
        self.line(saved_line(run))
        self.check.saved(run)
        if self.check.latest[run.id].waiting:
            self.waiting.set()
        self.check_done()

    def on_created(self, run: WorkflowRun) -> None:
        self.line(f"create {run.id} {run.workflow_id}")

    def on_timeline(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        for text in timeline_lines(run_id, events):
            self.line(text)

    def on_dispatched(self, run_id: str, target: str, job_id: str, owner: str = "") -> None:
        self.dispatches += 1
        self.line(f"hook dispatched {job_id}")
        self.check.dispatched(run_id, target, job_id)
        if owner and self.leased:
            self.check.acted(run_id, owner, f"dispatched {job_id} of", trio.current_time())

    def on_finished(self, run_id: str, step_id: str, status: Any) -> None:
        self.line(f"hook finished {run_id}:{step_id} {status.value}")

    def on_packet(self, subject: str, packet: BusPacket) -> None:
        self.line(f"bus {packet_line(subject, packet)}")
        p = packet.payload
        if isinstance(p, JobRequest):
            self.check.job_sent(p.env.get("run_id", ""), p.env.get("step_id", ""), p.job_id)

    def on_fault(self, kind: str, subject: str, packet: BusPacket) -> None:
        self.line(f"fault {kind} {packet_line(subject, packet)}")

    def on_store_fail(self, method: str, run_id: str) -> None:
        self.line(f"fault store {method} {run_id}")

    def on_worker(self, what: str, detail: str) -> None:
        self.line(f"worker {what} {detail}")

    def check_done(self) -> None:
        latest = self.check.latest
        if self.submitting_done and all(
            (r := latest.get(rid)) is not None and r.status.is_terminal
            for rid in self.accepted
        ):
            self.all_done.set()

    def stuck(self) -> list[str]:
        latest = self.check.latest
        return [f"{rid} ({r.status.value if (r := latest.get(rid)) else '?'})"
                for rid in self.accepted
                if not ((r := latest.get(rid)) and r.status.is_terminal)]


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
    bus = MemoryBus()
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
                            on_fault=sim.on_fault) as fbus,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_observe_bus, sim, bus)
            await nursery.start(pool.run, fbus, payloads)
            for k in range(sc.engines):
                await nursery.start(_engine_loop, sim, f"e{k}", inner, fbus, payloads, clock)
            nursery.start_soon(_approver, sim)
            await _submitter(sim)
            sim.submitting_done = True
            sim.check_done()
            await trio.sleep_until(t0 + sc.horizon)
            # Faults stop: the system must now converge.
            sim.faults_on = False
            sim.line("-- faults stop")
            fbus.stop()
            for view in sim.store_views.values():
                view.stop()
            pool.calm()
            if not sim.engine_ready.is_set():
                await sim.engine_ready.wait()
            with trio.move_on_after(sc.bound):
                await sim.all_done.wait()
            if not sim.all_done.is_set():
                if await _lost_runs(sim, inner):
                    return
                stuck = sim.stuck()
                sim.fail("liveness", f"{len(stuck)} run(s) not terminal {sc.bound:g}s "
                         f"after faults stopped: {', '.join(stuck[:10])}{_hint(sc)}")
            else:
                sim.line("-- all runs terminal")
                await _final_checks(sim, inner)
            nursery.cancel_scope.cancel()


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


async def _observe_bus(sim: Sim, bus: MemoryBus, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with bus.subscribe(">", max_buffer=math.inf) as channel:
        task_status.started()
        async for packet in channel:
            # the subject is not in the packet; infer it from the payload type
            p = packet.payload
            subject = ("sys.job.submit" if isinstance(p, JobRequest) else
                       "sys.job.result" if isinstance(p, JobResult) else
                       "sys.job.cancel" if isinstance(p, JobCancel) else "sys.workflow.event")
            sim.on_packet(subject, packet)


async def _engine_loop(sim: Sim, name: str, inner: Store, bus: Any,
                       payloads: PayloadStore, clock: TrioWallClock, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Engine ``name``: open, run until crashed, stay down a while, reopen (recovering)
    under a new engine id, as a restarted process would. Each incarnation reaches the
    store and the bus through ``Severable`` handles that its crash cuts."""
    incarnation = 0
    label = f" {name}" if sim.sc.engines > 1 else ""
    while True:
        owner = f"sim-{name}-{incarnation}"

        def dispatched(run_id: str, target: str, job_id: str, owner: str = owner) -> None:
            sim.on_dispatched(run_id, target, job_id, owner)

        options: dict[str, Any] = {"engine_id": owner} if sim.leased else {}
        store_handle = Severable(inner, StoreError, "store")
        bus_handle = Severable(bus, ConnectionError, "bus")
        store = observed_store(sim, store_handle)
        sim.store_views[name] = store
        with trio.CancelScope() as scope:
            sim.engine_scopes[name] = scope
            sim.severs[name] = (store_handle, bus_handle)
            sim.line(("engine open" if incarnation == 0 else "engine restart (recovering)")
                     + label)
            async with open_engine(store, bus_handle, payloads=payloads, clock=clock,
                                   new_id=sim.new_id, on_step_dispatched=dispatched,
                                   on_step_finished=sim.on_finished, **options) as engine:
                sim.engines[name] = engine
                sim.engine_ready.set()
                if incarnation == 0:
                    task_status.started()
                await trio.sleep_forever()
        incarnation += 1
        sim.engines.pop(name, None)
        sim.engine_scopes.pop(name, None)
        if not sim.engines:
            sim.engine_ready = trio.Event()
        sim.engine_restarts += 1
        sim.line("engine down" + label)
        await trio.sleep(sim.rng.uniform(0.1, 10.0))


async def _current_engine(sim: Sim) -> Engine:
    """An engine that is up (with several, a seeded choice)."""
    while not sim.engines:
        await sim.engine_ready.wait()
    names = sorted(sim.engines)
    return sim.engines[names[0] if len(names) == 1 else sim.rng.choice(names)]


async def _submitter(sim: Sim) -> None:
    sc = sim.sc
    wf_ids = list(sim.workflows)
    for i in range(sc.runs):
        await trio.sleep(sim.rng.uniform(0.0, sc.horizon / max(2 * sc.runs, 1)))
        wf = sim.workflows[sim.rng.choice(wf_ids)]
        payload = sc.inputs(sim.rng, wf)
        key = f"sim-{sim.seed}-{i}"
        while True:
            engine = await _current_engine(sim)
            run_id: str | None = None
            with trio.move_on_after(60):
                try:
                    run_id = await engine.submit(wf.id, payload, idempotency_key=key,
                                                 triggered_by="simulation")
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"submit {key} failed: {type(exc).__name__}")
            if run_id is not None:
                sim.accepted[run_id] = None
                sim.line(f"submit {key} accepted {run_id}")
                break
            await trio.sleep(sim.rng.uniform(0.1, 2.0))


async def _approver(sim: Sim) -> None:
    latest = sim.check.latest
    while True:
        await sim.waiting.wait()
        await trio.sleep(sim.rng.uniform(1.0, 15.0))
        if not sim.engines:
            continue
        engine = await _current_engine(sim)
        sim.waiting = trio.Event()
        for rid in list(latest):
            # a triggered approval handler waits in a *running* run; none in a terminal one
            for sid in latest[rid].waiting:
                ok = sim.rng.random() < sim.sc.approve_rate
                sim.line(f"{'approve' if ok else 'reject'} {rid}:{sid}")
                with trio.move_on_after(60):
                    try:
                        await engine.approve_step(rid, sid, ok)
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"approve {rid}:{sid} failed: {type(exc).__name__}")
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
        if sim.failure is not None:
            return
