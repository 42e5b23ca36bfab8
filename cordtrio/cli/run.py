"""``cordtrio run``: one workflow run on the in-memory backends, with in-process workers.

The command opens a ``MemoryStore``, ``MemoryBus``, ``MemoryPayloadStore`` and
``MemorySchemaRegistry``, an engine over them and a worker serving the handlers, submits the
run and watches it: the engine hooks and a store poll (every ``POLL_INTERVAL`` seconds) feed
the progress view; approvals are granted when asked to (``--approve-all``); a run that
waits for an approval nobody will give ends the watch. ``--timeout`` becomes the run's
timeout (the smaller of it and the workflow's ``timeout_sec``): the engine ends the run
``timed_out`` and cancels its jobs.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

from ..backends.memory import MemoryBus, MemoryPayloadStore, MemorySchemaRegistry, MemoryStore
from ..engine import Engine, TrioWallClock, open_engine
from ..errors import CordtrioError, InvalidStateError
from ..model import StepStatus, TimelineEvent, Workflow, WorkflowRun
from ..protocol import SUBJECT_WORKFLOW_EVENT, SystemAlert
from ..worker import Handler, open_worker
from .display import RunView
from .loading import EXIT_RUN_FAILED, CliError

POLL_INTERVAL = 0.1
TIMEOUT_GRACE = 5.0
"""Seconds past ``--timeout`` after which the command cancels a run the engine has not yet
ended ``timed_out``."""
TIMELINE_LIMIT = 1000
WORKER_ID = "cordtrio-cli"


@dataclass
class RunOptions:
    input: dict[str, Any] = field(default_factory=dict)
    handlers: Mapping[str, Handler] | None = None
    approve_all: bool = False
    timeout: float | None = None
    max_concurrency: int = 64


@dataclass
class Outcome:
    run: WorkflowRun
    timeline: list[TimelineEvent]
    alerts: list[SystemAlert]
    waiting: list[str]
    """Steps waiting for an approval when the command stopped watching (exit status 3)."""


async def execute(workflow: Workflow, options: RunOptions, view: RunView) -> Outcome:
    """Run ``workflow`` to the end (or until it can only wait) and return what happened."""
    if options.timeout:  # the command's timeout is a run timeout: the run ends timed_out
        workflow = workflow.clone()
        declared = workflow.timeout_sec
        workflow.timeout_sec = min(declared, options.timeout) if declared > 0 else options.timeout
    store = MemoryStore()
    bus = MemoryBus()
    payloads = MemoryPayloadStore()
    schemas = MemorySchemaRegistry()
    try:
        await store.save_workflow(workflow)
    except CordtrioError as exc:
        raise CliError(str(exc)) from None
    clock = TrioWallClock()
    alerts: list[SystemAlert] = []
    run_id = str(uuid.uuid4())  # known up front: the view shows it before the first dispatch
    ids = iter([run_id])
    view.begin(workflow, clock, run_id)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_collect_alerts, bus, view, alerts)
            async with AsyncExitStack() as stack:
                engine = await stack.enter_async_context(open_engine(
                    store, bus, payloads=payloads, schemas=schemas, clock=clock,
                    on_step_dispatched=view.dispatched, on_step_finished=view.finished,
                    recover=False, new_id=lambda: next(ids, None) or str(uuid.uuid4())))
                if options.handlers:
                    await stack.enter_async_context(open_worker(
                        bus, payloads, options.handlers, worker_id=WORKER_ID,
                        max_concurrency=options.max_concurrency))
                if await _submit(engine, workflow, options) != run_id:
                    raise CliError(f"the engine did not use run id {run_id}", EXIT_RUN_FAILED)
                run, waiting = await _watch(engine, run_id, view, options)
                timeline = await store.list_timeline_events(run_id, TIMELINE_LIMIT)
            nursery.cancel_scope.cancel()
    finally:
        view.end()
    return Outcome(run, timeline, alerts, waiting)


async def _submit(engine: Engine, workflow: Workflow, options: RunOptions) -> str:
    try:
        return await engine.submit(workflow.id, options.input, triggered_by="cordtrio-cli")
    except CordtrioError as exc:
        raise CliError(str(exc)) from None


async def _collect_alerts(bus: MemoryBus, view: RunView, alerts: list[SystemAlert], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with bus.subscribe(SUBJECT_WORKFLOW_EVENT, max_buffer=math.inf) as channel:
        task_status.started()
        async for packet in channel:
            if isinstance(packet.payload, SystemAlert):
                alerts.append(packet.payload)
                view.alert(packet.payload)


async def _watch(engine: Engine, run_id: str, view: RunView,
                 options: RunOptions) -> tuple[WorkflowRun, list[str]]:
    """Poll the run until it is terminal; approve or give up on approvals on the way."""
    deadline = (trio.current_time() + options.timeout) if options.timeout else math.inf
    cancelled = False
    while True:
        run = await engine.store.get_run(run_id)
        view.observe(run)
        if run.status.is_terminal:
            return run, []
        waiting = [sid for sid, sr in run.steps.items() if sr.status == StepStatus.WAITING]
        if waiting and options.approve_all:
            for step_id in waiting:
                view.note("approve", step_id, "approving (--approve-all)")
                with contextlib.suppress(InvalidStateError):  # resolved in the meantime
                    await engine.approve_step(run_id, step_id, approved=True)
        elif waiting and not _can_progress(run):
            return run, waiting
        if not cancelled and trio.current_time() >= deadline + TIMEOUT_GRACE:
            # The engine ends the run timed_out at the deadline; this is only a backstop.
            cancelled = True
            await engine.cancel_run(run_id)
            view.note("cancel", "", f"run cancelled: --timeout {options.timeout:g}s elapsed")
            continue
        with trio.move_on_after(POLL_INTERVAL):
            await engine.wait_run(run_id, poll_interval=POLL_INTERVAL)


def _can_progress(run: WorkflowRun) -> bool:
    """True while a job, a delay or a retry backoff can still move the run forward."""
    for sr in run.steps.values():
        for item in (sr, *sr.children.values()):
            if item.status == StepStatus.RUNNING and not item.children:
                return True
            if item.status == StepStatus.PENDING and item.next_attempt_at is not None:
                return True
    return False
