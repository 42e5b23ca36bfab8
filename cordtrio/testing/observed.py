"""The backends as a simulated engine sees them: observed, flaky, and cut by a crash.

``Severable`` is one engine incarnation's handle on a shared backend; a hard crash cuts it.
``ObservedStore`` (``ObservedLeaseStore`` over a store with run leases) is a ``FlakyStore``
that reports every successful write to the simulation (and every lease it sees taken,
renewed or released). ``open_storage`` opens the store the scenario runs on.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from ..backends.memory import MemoryPayloadStore, MemoryStore
from ..clock import TrioWallClock
from ..model import TimelineEvent, WorkflowRun
from ..ports import PayloadStore, RunChanges, Store
from .invariants import Invariants
from .store_faults import FlakyLeaseStore, FlakyStore

__all__ = ["STORES", "ObservedLeaseStore", "ObservedStore", "Severable", "observed_store",
           "open_storage"]

STORES = ("memory", "fakeredis")


class Severable:
    """One engine incarnation's handle on a shared backend (store or bus). A crash severs
    it: from then on every coroutine method fails at once with ``error``, so a crashed
    engine's clean-up code (shielded lease releases, forwarding of leftovers) cannot reach
    the store or the bus, as a process that died could not. Other attributes pass through.
    """

    def __init__(self, inner: Any, error: type[Exception], what: str) -> None:
        self._inner = inner
        self._error = error
        self._what = what
        self.severed = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.severed:
                await trio.lowlevel.checkpoint()
                raise self._error(f"{self._what}.{name}: this engine crashed (simulated)")
            return await attr(*args, **kwargs)

        setattr(self, name, call)  # found directly from now on (no __getattr__)
        return call


class Sim(Protocol):
    """What an observed store reports to: the scenario (``scenario.Sim``)."""

    rng_store: random.Random
    store_fail_rate: float
    store_ambiguous_rate: float
    store_read_fail_rate: float
    check: Invariants
    oracle: Any
    down_since: dict[str, float]
    leased: bool
    faults_on: bool

    def line(self, text: str) -> None: ...
    def on_saved(self, run: WorkflowRun) -> None: ...
    def on_created(self, run: WorkflowRun) -> None: ...
    def on_timeline(self, run_id: str, events: Sequence[TimelineEvent]) -> None: ...
    def on_store_fail(self, method: str, run_id: str) -> None: ...
    def on_store_fault(self, kind: str, method: str, key: str) -> None: ...


class ObservedStore(FlakyStore):
    """The simulation's view of the store: every *successful* write is reported."""

    def __init__(self, sim: Sim, inner: Store) -> None:
        super().__init__(inner, sim.rng_store, sim.store_fail_rate,
                         on_fail=sim.on_store_fail, ambiguous_rate=sim.store_ambiguous_rate,
                         read_fail_rate=sim.store_read_fail_rate,
                         on_fault=sim.on_store_fault)
        self.sim = sim
        self._creating_tokens: set[str] = set()  # the creating writes applied (``_saved``)

    def _written(self, method: str, *args: Any) -> None:
        # reported as soon as it is applied: its reply may yet be lost, or the engine
        # crash before it gets it
        if method == "create_run":
            self.sim.on_created(args[0])
        elif method == "save_run_changes":
            self._saved(*args)
        else:
            self.sim.on_timeline(*args)

    def _created(self, run: WorkflowRun, changes: RunChanges) -> None:
        self.sim.on_created(run)

    def _saved(self, run: WorkflowRun, changes: RunChanges,
               timeline: Sequence[TimelineEvent]) -> None:
        if changes.created:  # a write that creates the run (``ports.CreatingWrites``)
            if changes.created in self._creating_tokens:
                return  # a try of it after a lost reply: the store found it done
            self._creating_tokens.add(changes.created)
            self._created(run, changes)
        if changes or changes.lease_owner is None:  # not a (fenced) timeline-only append
            if changes.lease_owner is not None:
                self.sim.check.acted(run.id, changes.lease_owner, "wrote",
                                     trio.current_time())
            self.sim.on_saved(run)
        if timeline:
            self.sim.on_timeline(run.id, timeline)
        if changes.release_lease and changes.lease_owner is not None:  # released with it
            self.sim.check.lease_released(run.id, changes.lease_owner)


class ObservedLeaseStore(ObservedStore, FlakyLeaseStore):
    """``ObservedStore`` over a store with run leases: the lease calls that succeed tell
    the ``single_owner`` check who holds what until when (a creating write's too)."""

    def _created(self, run: WorkflowRun, changes: RunChanges) -> None:
        super()._created(run, changes)
        owner = changes.lease_owner
        if owner is not None and self.sim.check.lease_held(
                run.id, owner, trio.current_time() + changes.lease_ttl):
            self.sim.line(f"lease {run.id} taken by {owner}")

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        got = await super().acquire_lease(run_id, owner, ttl)
        before = self.sim.check.leases.get(run_id)
        if got and self.sim.check.lease_held(run_id, owner, trio.current_time() + ttl):
            # (judged before the trace line, which may itself crash an engine)
            if before is not None and _engine(before[0]) in self.sim.down_since \
                    and _engine(before[0]) != _engine(owner):
                self.sim.oracle.note("takeover before restart")
            self.sim.line(f"lease {run_id} taken by {owner}")
        return got

    async def renew_leases(self, owner: str, run_ids: Sequence[str], ttl: float) -> set[str]:
        lost = await super().renew_leases(owner, run_ids, ttl)
        expires = trio.current_time() + ttl
        for run_id in run_ids:
            if run_id not in lost:
                self.sim.check.lease_held(run_id, owner, expires)
        for run_id in sorted(lost):
            self.sim.line(f"lease {run_id} lost by {owner}")
        return lost

    async def release_lease(self, run_id: str, owner: str) -> None:
        await super().release_lease(run_id, owner)
        self.sim.check.lease_released(run_id, owner)


def _engine(owner: str) -> str:
    """The engine name of a lease owner ``sim-<name>-<incarnation>``."""
    return owner.split("-")[1] if owner.count("-") >= 2 else owner


def observed_store(sim: Sim, handle: Any) -> ObservedStore:
    """The observed, flaky view of the store through ``handle`` (a ``Severable``), with
    the lease capability when the scenario uses it (``sim.leased``)."""
    store = ObservedLeaseStore(sim, handle) if sim.leased else ObservedStore(sim, handle)
    if not sim.faults_on:
        store.stop()
    return store


@asynccontextmanager
async def open_storage(kind: str, clock: TrioWallClock
                       ) -> AsyncIterator[tuple[Store, PayloadStore]]:
    """The store and payload store the scenario runs on (``STORES``)."""
    if kind == "memory":
        yield MemoryStore(clock=clock), MemoryPayloadStore(ttl_seconds=None)
        return
    if kind != "fakeredis":
        raise ValueError(f"unknown simulation store {kind!r}: expected one of {STORES}")
    try:
        import fakeredis
    except ImportError:  # pragma: no cover - fakeredis is a test extra
        raise ValueError("store='fakeredis' needs the fakeredis package "
                         "(pip install fakeredis)") from None
    from ..backends.redis import connect

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())  # fresh and empty
    async with connect("fakeredis", client=client, clock=clock,
                       payload_ttl_seconds=None) as redis:
        yield redis.store, redis.payloads
