"""One simulated scenario, inside ``trio.run`` on a ``MockClock``: the backends, the engine
(crashed and reopened), simulated workers and the drivers (``drivers``: submitter,
approver, operator, crasher, partitioner), all observed.

``Scenario`` is a fully resolved configuration; ``play(sim)`` runs ``Sim(scenario)``, which
keeps the trace, the first violation if any, and what was observed (both in ``state``).
The backends as the engines see them (observed, flaky, severed by a crash) are in
``observed``. ``simulate`` in ``cordtrio.testing.simulation`` is the public way in.

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

from collections.abc import Sequence
from typing import Any

import trio

from ..backends.job_queues import WORKER_LOST
from ..backends.memory import MemoryBus
from ..client import Client
from ..clock import TrioWallClock
from ..engine.supervisor import open_engine
from ..errors import CordtrioError, StoreError
from ..model import Workflow
from ..ports import TIMELINE_CAP, PayloadStore, RunLeases, Store
from ..protocol import BusPacket, JobResult
from .drivers import approver as _approver
from .drivers import crasher as _crasher
from .drivers import operator as _operator
from .drivers import partitioner as _partitioner
from .drivers import submitter as _submitter
from .drivers import virtual_budget as _virtual_budget
from .faults import open_faulty_bus
from .generate import WORKER_TOPIC
from .observed import STORES, Severable, observed_store, open_storage
from .state import (
    ENGINE_STEP_TYPES,
    EPOCH,
    IDLE_SETTLE,
    LEASE_STORES,
    Budget,
    BudgetWatch,
    Scenario,
    Sim,
)
from .trace import violation_detail
from .workers import WorkerPool

__all__ = ["LEASE_STORES", "STORES", "Budget", "BudgetWatch", "Scenario", "Sim", "play"]


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
