"""The engine: a supervisor nursery, one task per active run, and the public API.

Commands and results are routed to the owning ``RunTask`` by run id; a run that is not
active yet is activated on demand (its task loads it from the store). API calls wait until
their envelope is applied, persisted and published (read-your-writes); results from the bus
are delivered without waiting, so one slow run never holds up another.
"""

from __future__ import annotations

import copy
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._nursery import open_service_nursery
from ..clock import TrioWallClock
from ..core.commands import rerun_from as core_rerun_from
from ..core.events import Approve, CancelRun, Event, ResultReceived, Start
from ..core.plan import Plan
from ..errors import CordtrioError, NotFoundError, ValidationError
from ..model import RunStatus, StepStatus, WorkflowRun
from ..ports import Bus, Clock, ConfigProvider, PayloadStore, SchemaRegistry, Store
from ..protocol import SUBJECT_RESULT, JobResult
from ..schemas import validate_value
from ..validation import collect_dependencies
from .retry import retrying
from .run_task import Envelope, Redirect, RunTask

log = logging.getLogger("cordtrio.engine")

RESULT_QUEUE = "cordtrio-workflow-engine"
RECOVERY_PAGE = 1_000_000

StepDispatchedHook = Callable[[str, str, str], Any]
StepFinishedHook = Callable[[str, str, StepStatus], Any]


class Engine:
    """Runs workflows. Create it with ``open_engine``; all methods are Trio coroutines."""

    def __init__(
        self,
        nursery: trio.Nursery,
        store: Store,
        bus: Bus,
        *,
        payloads: PayloadStore | None,
        schemas: SchemaRegistry | None,
        config: ConfigProvider | None,
        clock: Clock,
        on_step_dispatched: StepDispatchedHook | None,
        on_step_finished: StepFinishedHook | None,
        new_id: Callable[[], str],
    ) -> None:
        self._nursery = nursery
        self.store = store
        self.bus = bus
        self.payloads = payloads
        self.schemas = schemas
        self.config = config
        self.clock = clock
        self._on_dispatched = on_step_dispatched
        self._on_finished = on_step_finished
        self._new_id = new_id
        self._runs: dict[str, RunTask] = {}
        self._finished: dict[str, trio.Event] = {}
        self._plans: dict[tuple[str, Any], Plan] = {}

    # ------------------------------------------------------------------ public API

    @property
    def active_runs(self) -> int:
        """Number of runs with a task in this engine right now."""
        return len(self._runs)

    async def start_run(self, workflow_id: str, run_id: str) -> None:
        """Start a created run (SPEC §3). Raises ``NotFoundError`` for a missing workflow
        or run; does nothing for a terminal run."""
        await self.store.get_workflow(workflow_id)
        await self._call(run_id, Start())

    async def handle_job_result(self, result: JobResult) -> None:
        """Fold a job result into its run (SPEC §6). Never raises for bad input: results
        with unusable job ids, for unknown or finished runs, stale or duplicate, are
        ignored."""
        run_id = _run_id_of(result)
        if run_id is None:
            log.debug("ignoring result with unusable job id %r", getattr(result, "job_id", None))
            return
        try:
            await self._call(run_id, ResultReceived(result))
        except CordtrioError as exc:
            log.debug("ignoring result %s: %s", result.job_id, exc)

    async def approve_step(self, run_id: str, step_id: str, approved: bool = True) -> None:
        """Resolve a waiting approval (SPEC §9). Raises ``NotFoundError`` /
        ``InvalidStateError``."""
        await self._call(run_id, Approve(step_id, approved))

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a run: its steps, its jobs (``JobCancel``) and its timers (its task's
        cancel scope ends). A terminal run is left as it is; a missing one raises
        ``NotFoundError``."""
        await self._call(run_id, CancelRun())

    async def rerun_from(self, run_id: str, step_id: str = "", dry_run: bool = False) -> str:
        """Create (not start) a new run from ``run_id`` (SPEC §9); returns its id."""
        old = await self.store.get_run(run_id)
        workflow = await self.store.get_workflow(old.workflow_id)
        deps: set[str] = set()
        if step_id:
            if step_id not in workflow.steps:
                raise NotFoundError(f"run {run_id}: step '{step_id}' not found")
            deps = collect_dependencies(workflow, step_id)
        new = core_rerun_from(workflow, old, step_id, dry_run, self._new_id(),
                              self.clock.now(), deps)
        await self.store.create_run(new)
        return new.id

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
        """Validate ``input`` against the workflow's ``input_schema``, create the run and
        start it. With an ``idempotency_key`` already used, return that run's id and create
        nothing."""
        workflow = await self.store.get_workflow(workflow_id)
        payload = copy.deepcopy(input) if input is not None else {}
        if not isinstance(payload, dict):
            raise ValidationError(f"workflow '{workflow_id}' input: must be an object")
        if workflow.input_schema:
            validate_value(workflow.input_schema, payload, where=f"workflow '{workflow_id}' input")
        if idempotency_key:
            existing = await self.store.get_run_by_idempotency_key(idempotency_key)
            if existing:
                return await self._resubmitted(existing)
        now = self.clock.now()
        run = WorkflowRun(
            id=self._new_id(),
            workflow_id=workflow_id,
            org_id=workflow.org_id if org_id is None else org_id,
            team_id=workflow.team_id if team_id is None else team_id,
            input=payload,
            status=RunStatus.PENDING,
            triggered_by=triggered_by,
            created_at=now,
            updated_at=now,
            labels=dict(labels or {}),
            metadata={"dry_run": "true"} if dry_run else {},
            idempotency_key=idempotency_key or "",
            dry_run=dry_run,
        )
        if dry_run:
            run.labels["dry_run"] = "true"
        if idempotency_key and not await self.store.try_set_run_idempotency_key(
            idempotency_key, run.id
        ):
            existing = await self.store.get_run_by_idempotency_key(idempotency_key)
            if existing:
                return await self._resubmitted(existing)
        try:
            await self.store.create_run(run)
        except BaseException:
            if idempotency_key:
                with trio.CancelScope(shield=True):
                    await self.store.delete_run_idempotency_key(idempotency_key)
            raise
        await self._call(run.id, Start())
        return run.id

    async def _resubmitted(self, run_id: str) -> str:
        """A submit repeated with the same idempotency key: the run it created is returned,
        and started if an earlier submit was interrupted before starting it."""
        try:
            run = await self.store.get_run(run_id)
        except NotFoundError:
            return run_id  # the key outlived its run: nothing to start
        if run.status == RunStatus.PENDING and run.started_at is None:
            await self._call(run_id, Start())
        return run_id

    async def wait_run(self, run_id: str, *, poll_interval: float = 1.0) -> WorkflowRun:
        """Return the run once it is terminal. Woken by this engine's run task; a run not
        active here (driven by another engine) is re-read every ``poll_interval`` s."""
        while True:
            finished = self._finished.setdefault(run_id, trio.Event())
            run = await self.store.get_run(run_id)
            if run.status.is_terminal:
                return run
            if run_id in self._runs:
                await finished.wait()  # set by the run's task when the run ends
            else:
                with trio.move_on_after(poll_interval):
                    await finished.wait()

    # ------------------------------------------------------------------ routing

    async def _call(self, run_id: str, event: Event) -> None:
        """Deliver ``event`` to the run's task and wait until it is applied."""
        for _ in range(3):
            envelope = Envelope(event, done=trio.Event())
            self._deliver(run_id, envelope)
            assert envelope.done is not None
            await envelope.done.wait()
            if isinstance(envelope.error, Redirect):
                continue  # the task ended just before our envelope; a new one takes it
            if envelope.error is not None:
                raise envelope.error
            return
        raise CordtrioError(f"run {run_id}: could not deliver {type(event).__name__}")

    def _deliver(self, run_id: str, envelope: Envelope) -> None:
        """Hand an envelope to the run's task, activating one if needed. Never blocks."""
        task = self._runs.get(run_id)
        if task is None:
            task = RunTask(self, run_id)
            # Start first: on a closed engine start_soon raises, and a task registered but
            # never started would swallow every later envelope for the run (callers hang).
            self._nursery.start_soon(task.run, name=f"cordtrio-run:{run_id}")
            self._runs[run_id] = task
        task.send.send_nowait(envelope)

    def _route_result(self, result: JobResult) -> None:
        run_id = _run_id_of(result)
        if run_id is not None:
            self._deliver(run_id, Envelope(ResultReceived(result)))

    def _run_exited(self, task: RunTask) -> None:
        if self._runs.get(task.run_id) is task:
            del self._runs[task.run_id]
            # A task can end with its run unfinished (it crashed, its run or workflow was
            # deleted): wake ``wait_run`` callers so they re-read the store (and poll).
            self._run_finished(task.run_id)

    def _run_finished(self, run_id: str) -> None:
        event = self._finished.pop(run_id, None)
        if event is not None:
            event.set()

    async def _plan_for(self, workflow_id: str) -> Plan:
        """The workflow compiled for execution, with its registry schemas resolved;
        cached per workflow version (``updated_at``)."""
        workflow = await retrying(lambda: self.store.get_workflow(workflow_id),
                                  f"load workflow {workflow_id}")
        key = (workflow.id, workflow.updated_at)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        probe = Plan.build(workflow)
        resolved: dict[str, dict[str, Any] | None] | None = None
        if self.schemas is not None:
            resolved = {}
            for schema_id in sorted(probe.schema_ids()):
                try:
                    resolved[schema_id] = await self.schemas.get(schema_id)
                except NotFoundError:
                    resolved[schema_id] = None
        plan = Plan.build(workflow, schemas=resolved, has_payload_store=self.payloads is not None)
        if len(self._plans) > 1024:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ hooks

    def _hook_dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        if self._on_dispatched is not None:
            try:
                self._on_dispatched(run_id, step_id, job_id)
            except Exception:
                log.exception("on_step_dispatched hook failed for %s", job_id)

    def _hook_finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        if self._on_finished is not None:
            try:
                self._on_finished(run_id, step_id, status)
            except Exception:
                log.exception("on_step_finished hook failed for %s/%s", run_id, step_id)

    # ------------------------------------------------------------------ background

    async def _consume_results(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with self.bus.subscribe(SUBJECT_RESULT, queue=RESULT_QUEUE) as channel:
            task_status.started()
            async for packet in channel:
                payload = getattr(packet, "payload", None)
                if isinstance(payload, JobResult):
                    self._route_result(payload)

    async def _recover(self) -> int:
        """Activate every started, non-terminal run in the store (SPEC §12)."""
        count = 0
        for status in (RunStatus.RUNNING, RunStatus.WAITING):
            ids = await retrying(
                functools.partial(self.store.list_run_ids_by_status, status.value,
                                  RECOVERY_PAGE),
                f"list {status.value} runs")
            for run_id in ids:
                if run_id not in self._runs:
                    self._deliver(run_id, Envelope(Start()))
                    count += 1
        return count


def _run_id_of(result: object) -> str | None:
    job_id = getattr(result, "job_id", None)
    if not isinstance(job_id, str) or ":" not in job_id:
        return None
    run_id = job_id.rpartition(":")[0]
    return run_id or None


@asynccontextmanager
async def open_engine(
    store: Store,
    bus: Bus,
    *,
    payloads: PayloadStore | None = None,
    schemas: SchemaRegistry | None = None,
    config: ConfigProvider | None = None,
    clock: Clock | None = None,
    on_step_dispatched: StepDispatchedHook | None = None,
    on_step_finished: StepFinishedHook | None = None,
    new_id: Callable[[], str] | None = None,
    recover: bool = True,
) -> AsyncIterator[Engine]:
    """Open an engine over ``store`` and ``bus``.

    On entry it subscribes to job results (queue group ``cordtrio-workflow-engine``) and,
    with ``recover=True``, resumes every running or waiting run in the store (timers
    re-armed from ``next_attempt_at``, nothing already running dispatched again).
    Leaving the block cancels every run task; run state stays in the store for the next
    engine. ``new_id`` makes run ids deterministic (simulations); default ``uuid4``.
    """
    async with open_service_nursery() as nursery:
        engine = Engine(
            nursery,
            store,
            bus,
            payloads=payloads,
            schemas=schemas,
            config=config,
            clock=clock or TrioWallClock(),
            on_step_dispatched=on_step_dispatched,
            on_step_finished=on_step_finished,
            new_id=new_id or (lambda: str(uuid.uuid4())),
        )
        await nursery.start(engine._consume_results)
        if recover:
            await engine._recover()
        yield engine
