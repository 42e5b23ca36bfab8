"""Running an engine inside an application: ``serve_engine`` for ``nursery.start``, and
``run_workflow``, which submits a run, waits for it and raises unless it succeeded."""

from __future__ import annotations

from typing import Any

import trio

from ..model import WorkflowRun
from ..ports import Bus, Store
from .supervisor import Engine, open_engine


async def serve_engine(
    store: Store,
    bus: Bus,
    *,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Run an engine until cancelled; for ``nursery.start``, which returns the ``Engine``
    once it is ready (subscribed to results, runs recovered). ``options`` are the keyword
    arguments of ``open_engine``. Cancelling the task closes the engine as leaving
    ``open_engine``'s block does: run tasks stop, their state stays in the store."""
    async with open_engine(store, bus, **options) as engine:
        task_status.started(engine)
        await trio.sleep_forever()


async def run_workflow(
    engine: Engine,
    workflow_id: str,
    input: dict[str, Any] | None = None,
    *,
    poll_interval: float = 1.0,
    **submit_options: Any,
) -> WorkflowRun:
    """Submit a run of ``workflow_id`` (``engine.submit``, with ``submit_options``), wait
    until it is terminal (``engine.wait_run``) and return it if it ``succeeded``; otherwise
    raise ``RunFailedError`` naming the run, its status and the failing step's error.

    A run waiting for an approval waits here too: bound the call with ``trio.fail_after``
    (the run goes on in the engine when the call is cancelled)."""
    return await engine.run(workflow_id, input, poll_interval=poll_interval, **submit_options)


__all__ = ["run_workflow", "serve_engine"]
