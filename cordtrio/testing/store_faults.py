"""A store that blinks: transient write failures, injected before anything is written.

``FlakyStore(inner, rng, fail_rate)`` implements the ``Store`` port over any store. With
probability ``fail_rate`` (drawn from ``rng``), ``create_run``, ``save_run_changes`` and
``append_timeline_events`` raise ``StoreError`` *before* touching ``inner``, so retrying the
call is always safe. Everything else is passed through. ``stop()`` ends the failures;
``failures`` counts them per method.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import trio

from ..errors import StoreError
from ..model import TimelineEvent, Workflow, WorkflowRun
from ..ports import RunChanges, Store

__all__ = ["FLAKY_METHODS", "FlakyStore"]

FLAKY_METHODS = ("create_run", "save_run_changes", "append_timeline_events")


class FlakyStore:
    """A ``Store`` wrapper whose writes fail now and then (see the module docstring)."""

    def __init__(
        self,
        inner: Store,
        rng: random.Random,
        fail_rate: float = 0.05,
        *,
        on_fail: Callable[[str, str], None] | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be a probability in [0, 1], got {fail_rate!r}")
        self.inner = inner
        self.fail_rate = fail_rate
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

    async def _maybe_fail(self, method: str, run_id: str) -> None:
        if self.active and self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self.failures[method] += 1
            if self._on_fail is not None:
                self._on_fail(method, run_id)
            await trio.lowlevel.checkpoint()
            raise StoreError(f"{method} {run_id}: injected transient store failure")

    # ------------------------------------------------------------------ flaky writes

    async def create_run(self, run: WorkflowRun) -> None:
        await self._maybe_fail("create_run", run.id)
        await self.inner.create_run(run)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        await self._maybe_fail("save_run_changes", run.id)
        await self.inner.save_run_changes(run, changes, timeline)

    async def append_timeline_events(self, run_id: str, events: Sequence[TimelineEvent]
                                     ) -> None:
        await self._maybe_fail("append_timeline_events", run_id)
        await self.inner.append_timeline_events(run_id, events)

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

    async def get_run(self, run_id: str) -> WorkflowRun:
        return await self.inner.get_run(run_id)

    async def delete_run(self, run_id: str) -> None:
        await self.inner.delete_run(run_id)

    async def count_active_runs(self, org_id: str) -> int:
        return await self.inner.count_active_runs(org_id)

    async def list_runs_by_workflow(self, workflow_id: str, limit: int = 50
                                    ) -> list[WorkflowRun]:
        return await self.inner.list_runs_by_workflow(workflow_id, limit)

    async def list_runs(self, cursor_unix: int = 0, limit: int = 50) -> list[WorkflowRun]:
        return await self.inner.list_runs(cursor_unix, limit)

    async def list_run_ids_by_status(self, status: str, limit: int = 200) -> list[str]:
        return await self.inner.list_run_ids_by_status(status, limit)

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await self.inner.append_timeline_event(run_id, event)

    async def list_timeline_events(self, run_id: str, limit: int = 100
                                   ) -> list[TimelineEvent]:
        return await self.inner.list_timeline_events(run_id, limit)

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        return await self.inner.try_set_run_idempotency_key(key, run_id)

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        return await self.inner.get_run_by_idempotency_key(key)

    async def delete_run_idempotency_key(self, key: str) -> None:
        await self.inner.delete_run_idempotency_key(key)
