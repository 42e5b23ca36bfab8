"""A store that blinks: failed writes, ambiguous writes and failed reads, seeded.

``FlakyStore(inner, rng, fail_rate, ambiguous_rate=..., read_fail_rate=...)`` implements
the ``Store`` port over any store. The writes (``create_run``, ``save_run_changes``,
``append_timeline_events``):

* with probability ``fail_rate`` raise ``StoreError`` *before* touching ``inner`` (nothing
  written);
* with probability ``ambiguous_rate`` raise ``AmbiguousStoreError`` (a ``StoreError``)
  *after* the write was applied: the reply was lost, the caller cannot tell it happened.

The reads (``get_run``, ``list_timeline_events``, ``get_run_by_idempotency_key``,
``list_run_ids_by_status``) raise ``StoreError`` with probability ``read_fail_rate``.
Everything else is passed through. ``on_fail(method, run_id)`` hears of each failed
write, ``on_fault(kind, method, run_id)`` of each ambiguous write (``"ambiguous"``) and
failed read (``"read"``). ``stop()`` ends the failures;
``failures`` counts them per method. Over a store with the ``RunLeases`` capability (several
engines over one store), ``FlakyLeaseStore`` keeps it and fails the lease writes too;
``flaky_store(inner, ...)`` picks the class.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..errors import StoreError
from ..model import TimelineEvent, Workflow, WorkflowRun
from ..ports import RunChanges, RunLeases, Store, creates_runs_on_write

__all__ = ["FLAKY_METHODS", "FLAKY_READS", "AmbiguousStoreError", "FlakyLeaseStore",
           "FlakyStore", "flaky_store"]

FLAKY_METHODS = ("create_run", "save_run_changes", "append_timeline_events")
FLAKY_READS = ("get_run", "list_timeline_events", "get_run_by_idempotency_key",
               "list_run_ids_by_status")


class AmbiguousStoreError(StoreError):
    """An injected ambiguous write: it was applied, but its reply was lost."""


class FlakyStore:
    """A ``Store`` wrapper whose writes fail now and then (see the module docstring)."""

    def __init__(
        self,
        inner: Store,
        rng: random.Random,
        fail_rate: float = 0.05,
        *,
        on_fail: Callable[[str, str], None] | None = None,
        ambiguous_rate: float = 0.0,
        read_fail_rate: float = 0.0,
        on_fault: Callable[[str, str, str], None] | None = None,
    ) -> None:
        for name, rate in (("fail_rate", fail_rate), ("ambiguous_rate", ambiguous_rate),
                           ("read_fail_rate", read_fail_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {rate!r}")
        self.inner = inner
        self.fail_rate = fail_rate
        self.ambiguous_rate = ambiguous_rate
        self.read_fail_rate = read_fail_rate
        self._on_fault = on_fault
        self.active = True
        self.failures: Counter[str] = Counter()
        self._rng = rng
        self._on_fail = on_fail

    def stop(self) -> None:
        """No more injected failures."""
        self.active = False

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())

    @property
    def creates_runs_on_write(self) -> bool:
        """The inner store's (``ports.CreatingWrites``): a write that creates a run fails,
        or loses its reply, as any write does."""
        return creates_runs_on_write(self.inner)

    async def _maybe_fail(self, method: str, run_id: str) -> None:
        if self.active and self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self.failures[method] += 1
            if self._on_fail is not None:
                self._on_fail(method, run_id)
            await trio.lowlevel.checkpoint()
            raise StoreError(f"{method} {run_id}: injected transient store failure")

    def _written(self, method: str, *args: Any) -> None:
        """Called right after each write applied to the inner store, with the write's
        arguments, before its reply may be lost (a hook for subclasses)."""

    async def _maybe_lose_reply(self, method: str, run_id: str) -> None:
        """After a write was applied: maybe lose its reply (``AmbiguousStoreError``)."""
        if (self.active and self.ambiguous_rate > 0
                and self._rng.random() < self.ambiguous_rate):
            self.failures[f"{method} (ambiguous)"] += 1
            if self._on_fault is not None:
                self._on_fault("ambiguous", method, run_id)
            await trio.lowlevel.checkpoint()
            raise AmbiguousStoreError(f"{method} {run_id}: injected lost reply (the write "
                                      "was applied)")

    async def _maybe_fail_read(self, method: str, key: str) -> None:
        if (self.active and self.read_fail_rate > 0
                and self._rng.random() < self.read_fail_rate):
            self.failures[f"{method} (read)"] += 1
            if self._on_fault is not None:
                self._on_fault("read", method, key)
            await trio.lowlevel.checkpoint()
            raise StoreError(f"{method} {key}: injected transient read failure")

    # ------------------------------------------------------------------ flaky writes

    async def create_run(self, run: WorkflowRun) -> None:
        await self._maybe_fail("create_run", run.id)
        await self.inner.create_run(run)
        self._written("create_run", run)
        await self._maybe_lose_reply("create_run", run.id)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        await self._maybe_fail("save_run_changes", run.id)
        await self.inner.save_run_changes(run, changes, timeline)
        self._written("save_run_changes", run, changes, timeline)
        await self._maybe_lose_reply("save_run_changes", run.id)

    async def append_timeline_events(self, run_id: str, events: Sequence[TimelineEvent]
                                     ) -> None:
        await self._maybe_fail("append_timeline_events", run_id)
        await self.inner.append_timeline_events(run_id, events)
        self._written("append_timeline_events", run_id, events)
        await self._maybe_lose_reply("append_timeline_events", run_id)

    # ------------------------------------------------------------------- flaky reads

    async def get_run(self, run_id: str) -> WorkflowRun:
        await self._maybe_fail_read("get_run", run_id)
        return await self.inner.get_run(run_id)

    async def list_timeline_events(self, run_id: str, limit: int = 100
                                   ) -> list[TimelineEvent]:
        await self._maybe_fail_read("list_timeline_events", run_id)
        return await self.inner.list_timeline_events(run_id, limit)

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        await self._maybe_fail_read("get_run_by_idempotency_key", key)
        return await self.inner.get_run_by_idempotency_key(key)

    async def list_run_ids_by_status(self, status: str, limit: int = 200) -> list[str]:
        await self._maybe_fail_read("list_run_ids_by_status", status)
        return await self.inner.list_run_ids_by_status(status, limit)

    # ------------------------------------------------------------------ pass-through

    async def save_workflow(self, wf: Workflow) -> None:
        await self.inner.save_workflow(wf)

    async def get_workflow(self, workflow_id: str) -> Workflow:
        return await self.inner.get_workflow(workflow_id)

    async def delete_workflow(self, workflow_id: str) -> None:
        await self.inner.delete_workflow(workflow_id)

    async def list_workflows(self, org_id: str = "", limit: int = 50) -> list[Workflow]:
        return await self.inner.list_workflows(org_id, limit)

    async def update_run(self, run: WorkflowRun) -> None:
        await self.inner.update_run(run)

    async def delete_run(self, run_id: str) -> None:
        await self.inner.delete_run(run_id)

    async def count_active_runs(self, org_id: str) -> int:
        return await self.inner.count_active_runs(org_id)

    async def list_runs_by_workflow(self, workflow_id: str, limit: int = 50
                                    ) -> list[WorkflowRun]:
        return await self.inner.list_runs_by_workflow(workflow_id, limit)

    async def list_runs(self, cursor_unix: int = 0, limit: int = 50) -> list[WorkflowRun]:
        return await self.inner.list_runs(cursor_unix, limit)

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await self.inner.append_timeline_event(run_id, event)

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        return await self.inner.try_set_run_idempotency_key(key, run_id)

    async def delete_run_idempotency_key(self, key: str) -> None:
        await self.inner.delete_run_idempotency_key(key)


class FlakyLeaseStore(FlakyStore):
    """``FlakyStore`` over a store with the ``RunLeases`` capability (multi-engine mode),
    which it keeps: the lease and inbox writes (``acquire_lease``, ``renew_leases``,
    ``push_command``, ``push_unassigned``) fail like the other writes, before touching the
    inner store; everything else passes through. ``flaky_store`` picks the right class."""

    inner: Any

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        await self._maybe_fail("acquire_lease", run_id)
        return bool(await self.inner.acquire_lease(run_id, owner, ttl))

    async def renew_leases(self, owner: str, run_ids: Sequence[str], ttl: float) -> set[str]:
        await self._maybe_fail("renew_leases", owner)
        return set(await self.inner.renew_leases(owner, run_ids, ttl))

    async def release_lease(self, run_id: str, owner: str) -> None:
        await self.inner.release_lease(run_id, owner)

    async def lease_owner(self, run_id: str) -> str | None:
        owner: str | None = await self.inner.lease_owner(run_id)
        return owner

    async def unleased(self, run_ids: Sequence[str]) -> list[str]:
        return list(await self.inner.unleased(run_ids))

    async def push_command(self, run_id: str, data: bytes) -> str | None:
        await self._maybe_fail("push_command", run_id)
        woken: str | None = await self.inner.push_command(run_id, data)
        return woken

    async def push_unassigned(self, run_id: str, data: bytes) -> None:
        await self._maybe_fail("push_unassigned", run_id)
        await self.inner.push_unassigned(run_id, data)

    async def take_commands(self, run_id: str) -> list[bytes]:
        return list(await self.inner.take_commands(run_id))

    async def ack_commands(self, run_id: str, owner: str, count: int) -> bool:
        return bool(await self.inner.ack_commands(run_id, owner, count))

    async def runs_with_commands(self, limit: int = 1000) -> list[str]:
        return list(await self.inner.runs_with_commands(limit))

    async def wait_wakeups(self, owner: str, timeout: float) -> list[str]:
        return list(await self.inner.wait_wakeups(owner, timeout))


def flaky_store(inner: Store, rng: random.Random, fail_rate: float = 0.05, *,
                on_fail: Callable[[str, str], None] | None = None,
                ambiguous_rate: float = 0.0, read_fail_rate: float = 0.0,
                on_fault: Callable[[str, str, str], None] | None = None) -> FlakyStore:
    """A ``FlakyLeaseStore`` when ``inner`` has the ``RunLeases`` capability, else a
    ``FlakyStore``: the wrapper keeps what the engine can do with the inner store."""
    cls = FlakyLeaseStore if isinstance(inner, RunLeases) else FlakyStore
    return cls(inner, rng, fail_rate, on_fail=on_fail, ambiguous_rate=ambiguous_rate,
               read_fail_rate=read_fail_rate, on_fault=on_fault)
