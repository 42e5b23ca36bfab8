"""A store-only client: submit, approve, cancel and watch runs without a bus or an engine.

The engines sharing the store do the work. ``Client`` writes the run (the same validation as
``Engine.submit``) and queues the command in the store; an engine picks it up (the lease
holder of the run, or any engine for a run nobody holds yet) and applies it. So every command
method returns once the command is *durably queued*, not once it is applied — ``wait_run``
waits for the outcome. The store must support ``RunLeases`` (the Redis and memory stores do;
engines over a memory store must be opened with ``multi_engine=True`` to serve a client).

```python
async with cordtrio.backends.redis.connect(url) as redis:
    client = Client(redis.store, schemas=redis.schemas)
    run_id = await client.submit("wf-1", {"x": 1})
    run = await client.wait_run(run_id)
```
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import trio

from .clock import SystemClock
from .core.events import Approve, CancelRun, Event, Start
from .engine.submission import check_approvable, create_rerun, submit_run
from .errors import ValidationError
from .model import WorkflowRun
from .ports import Clock, RunLeases, SchemaRegistry, Store
from .wire_commands import encode_command


class Client:
    """Commands to the engines of a shared store (see the module docstring).

    ``schemas`` is accepted for symmetry with ``open_engine`` (input schemas are inline in
    the workflow, so submitting does not need it); ``clock`` stamps ``created_at``;
    ``new_id`` makes run ids deterministic (tests), default ``uuid4``.
    """

    def __init__(
        self,
        store: Store,
        *,
        schemas: SchemaRegistry | None = None,
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        if not isinstance(store, RunLeases):
            raise ValidationError(
                f"Client: store {type(store).__name__} cannot queue commands for engines "
                "(it does not implement cordtrio.ports.RunLeases)")
        self.store = store
        self.schemas = schemas
        self.clock: Clock = clock or SystemClock()
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    @property
    def _leases(self) -> RunLeases:
        assert isinstance(self.store, RunLeases)
        return self.store

    async def submit(
        self,
        workflow_id: str,
        input: dict[str, Any] | None = None,
        *,
        org_id: str | None = None,
        team_id: str | None = None,
        idempotency_key: str | None = None,
        labels: dict[str, str] | None = None,
        dry_run: bool = False,
        triggered_by: str = "",
    ) -> str:
        """Validate ``input``, create the pending run and queue its start for any engine;
        return the run id. With an ``idempotency_key`` already used, return that run's id
        (queuing its start only if it never started). Raises ``NotFoundError`` for an
        unknown workflow, ``ValidationError`` for a bad input."""
        done = await submit_run(
            self.store, self.clock, self._new_id, workflow_id, input, org_id=org_id,
            team_id=team_id, idempotency_key=idempotency_key, labels=labels,
            dry_run=dry_run, triggered_by=triggered_by)
        if done.needs_start:
            await self._leases.push_unassigned(done.run_id, encode_command(Start()))
        return done.run_id

    async def approve_step(self, run_id: str, step_id: str, approved: bool = True) -> None:
        """Queue the resolution of a waiting approval. Raises ``NotFoundError`` (run or
        step) / ``InvalidStateError`` (step not waiting) at once; applied by the run's
        engine asynchronously."""
        await check_approvable(self.store, run_id, step_id)
        await self._send(run_id, Approve(step_id, approved))

    async def cancel_run(self, run_id: str) -> None:
        """Queue the cancellation of a run (``NotFoundError`` for a missing run; a terminal
        run is left as it is)."""
        run = await self.store.get_run(run_id)
        if run.status.is_terminal:
            return
        await self._send(run_id, CancelRun())

    async def rerun_from(self, run_id: str, step_id: str = "", dry_run: bool = False) -> str:
        """Create a new run from ``run_id`` (SPEC §9) and queue its start; return its id."""
        new_id = await create_rerun(self.store, self.clock, self._new_id, run_id, step_id,
                                    dry_run)
        await self._leases.push_unassigned(new_id, encode_command(Start()))
        return new_id

    async def get_run(self, run_id: str) -> WorkflowRun:
        """The run as stored now (``NotFoundError`` when missing)."""
        return await self.store.get_run(run_id)

    async def wait_run(self, run_id: str, *, poll_interval: float = 0.5) -> WorkflowRun:
        """Re-read the run every ``poll_interval`` s until it is terminal; return it. Wrap
        it in ``trio.move_on_after``/``fail_after`` to bound the wait."""
        while True:
            run = await self.store.get_run(run_id)
            if run.status.is_terminal:
                return run
            await trio.sleep(poll_interval)

    async def _send(self, run_id: str, event: Event) -> None:
        await self._leases.push_command(run_id, encode_command(event))


__all__ = ["Client"]
