"""Single-engine ownership: the engine is alone on its store, so every run is its own.

Nothing to acquire, renew or forward: writes are not fenced, commands are never queued in
the store, a parked run may end its task (the next envelope reloads it), and envelopes a
task did not apply are answered with ``Redirect`` so their callers deliver them again, to a
new task. The multi-engine strategy is ``leases.LeaseKeeper``; both implement
``host.Ownership``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio

from ..core.events import Start
from ..model import RunStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges, Store, creates_runs_on_write, own_call
from ..retry import retrying
from .envelopes import Envelope
from .host import OwnedRun, RunRouter

RECOVERY_PAGE = 1_000_000


class SingleEngine:
    """``host.Ownership`` for an engine alone on its store."""

    queues_commands = False

    def __init__(self, store: Store, router: RunRouter) -> None:
        self.store = store
        self.router = router
        # creating a run is the store's own call (no coroutine of ours around it)
        self.create_run: Callable[[WorkflowRun], Awaitable[None]] = store.create_run
        # ``ports.CreatingWrites``, told once: a submitted run is created by its first write
        self.creates_on_write: bool = creates_runs_on_write(store)
        # The store's write called without awaiting it (``ports.WritesNow``), or None
        self.save_changes_now: Callable[[WorkflowRun, RunChanges, list[TimelineEvent]],
                                        None] | None = own_call(
            store, "writes_now", "save_run_changes_now")

    def fresh_run(self, created: WorkflowRun | None) -> WorkflowRun | None:
        return created

    def may_unload_idle(self) -> bool:
        return True

    async def acquire(self, run: OwnedRun) -> bool:
        return True  # (a run not created yet too: its first write creates it)

    async def take_commands(self, run_id: str) -> list[Envelope]:
        return []

    async def acknowledge(self, run_id: str) -> None:
        return None

    def save_changes(self, run: WorkflowRun, changes: RunChanges,
                     events: list[TimelineEvent]) -> Awaitable[None]:
        return self.store.save_run_changes(run, changes, events)  # the store's own call

    async def append_timeline(self, run: WorkflowRun, events: list[TimelineEvent]) -> None:
        await self.store.append_timeline_events(run.id, events)

    async def let_go(self, run: OwnedRun) -> None:
        run.fail_leftovers(run.error)

    async def start(self, nursery: trio.Nursery) -> None:
        return None

    async def recover(self, nursery: trio.Nursery) -> int:
        """Activate every running and waiting run in the store (SPEC §12)."""
        count = 0
        for status in (RunStatus.RUNNING, RunStatus.WAITING):
            ids = await retrying(
                functools.partial(self.store.list_run_ids_by_status, status.value,
                                  RECOVERY_PAGE),
                f"list {status.value} runs")
            for run_id in ids:
                if not self.router.is_active(run_id):
                    self.router.deliver(run_id, Envelope(Start()))
                    count += 1
        return count


__all__ = ["RECOVERY_PAGE", "SingleEngine"]
