"""The engine: a supervisor nursery, one task per active run, and the public API.

Commands and results are routed to the owning ``RunTask`` by run id; a run that is not
active yet is activated on demand (its task loads it from the store). API calls wait until
their envelope is applied, persisted and published (read-your-writes); results from the bus
are delivered without waiting, so one slow run never holds up another.

Who owns a run is a strategy chosen once in ``open_engine`` (``host.Ownership``): alone on
its store the engine owns every run (``ownership.SingleEngine``); over a store that
implements ``RunLeases`` it runs in multi-engine mode (``leases.LeaseKeeper``, also
``engine.leases``): a run is driven only by the engine holding its lease, and what reaches
another engine is forwarded through the store. API calls for a run another engine owns
return once the command is checked and queued; the owner applies it asynchronously.

The engine is its run tasks' ``host.RunHost`` and its ownership strategy's
``host.RunRouter``; neither sees more of it. What it delegates lives beside it: creating
runs (``submission``), ``wait_run``'s waiters (``waits``), compiled workflows
(``plans``), listening to the bus and the resend sweep (``feeds``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from .._nursery import open_service_nursery
from ..clock import TrioWallClock
from ..core.events import (
    Approve,
    CancelRun,
    Event,
    JobStarted,
    ResultReceived,
    Start,
)
from ..errors import (
    CordtrioError,
    CorruptDataError,
    InvalidStateError,
    LeaseLostError,
    RunFailedError,
    ValidationError,
)
from ..json_payloads import path_for
from ..model import RunStatus, WorkflowRun
from ..payloads import POINTER_SCHEME
from ..ports import (
    Bus,
    Clock,
    ConfigProvider,
    JobBus,
    PayloadStore,
    RunLeases,
    SchemaRegistry,
    Store,
)
from ..protocol import (
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    BusPacket,
    JobProgress,
    JobResult,
    JobStatus,
)
from .effects import commits_payloads
from .envelopes import Envelope, Item, Mailbox, Preload, Redirect, Reply, ResultRead
from .feeds import listen, resend_sweep, run_id_of
from .gc_tuning import long_lived_gc
from .host import Ownership, StepDispatchedHook, StepFinishedHook
from .leases import DEFAULT_LEASE_TTL, LeaseKeeper
from .ownership import SingleEngine
from .plans import PlanCache
from .run_task import RunTask, RunWiring
from .stalls import StallWatch
from .submission import create_rerun, random_run_id, submit_run
from .timers import Alarm
from .unreadable import fail_unreadable, load_run
from .waits import RunWaits

DEFAULT_RESEND_AFTER = 60.0
"""Seconds without a result after which a job is published again (``open_engine``)."""

log = logging.getLogger("cordtrio.engine")

_SUCCEEDED = JobStatus.SUCCEEDED
_SCHEME_LENGTH = len(POINTER_SCHEME)

_PROBE_KEY = "cordtrio-stall-probe"
"""The idempotency key the stall watchdog looks up to see whether the store answers."""


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
        engine_id: str = "",
        resend_after: float = 0.0,
    ) -> None:
        self._nursery = nursery
        self.resend_after = resend_after if isinstance(bus, JobBus) else 0.0
        self.engine_id = engine_id or uuid.uuid4().hex
        self.leases: LeaseKeeper | None = None  # set by open_engine in multi-engine mode
        self.ownership: Ownership = SingleEngine(store, self)  # replaced by open_engine
        self.store = store
        self.bus = bus
        self.payloads = payloads
        self.payloads_in_changes = commits_payloads(store, payloads)
        """Job inputs go into the run writes (``run_task``), not a put of their own."""
        self.payload_path = path_for(payloads) if payloads is not None else None
        """The payload store's calls, picked once for every run task (``path_for``)."""
        self._read_then = self.payload_path.result_then if self.payload_path is not None \
            and self.payload_path.output_at_now is None else None
        """Results' outputs read before their run tasks wake (``_read_output``)."""
        self.schemas = schemas
        self.config = config
        self.clock = clock
        self._on_step_dispatched = on_step_dispatched
        self._on_step_finished = on_step_finished
        self._new_id = new_id
        self._runs: dict[str, RunTask] = {}
        self._wiring: RunWiring | None = None  # what every run task uses (``deliver``)
        self._waits = RunWaits(store, self._runs)  # ``wait_run``'s callers, ended runs
        self._ended = self._waits.ended
        self.ended_mark = self._ended.mark  # (``RunWiring.final_mark``)
        self.run_finished = self._waits.run_finished  # ``RunHost``: wake its waiters
        self.plan_for = PlanCache(
            store, schemas, has_payload_store=payloads is not None,
            starts_reported=self.starts_reported, resend_after=self.resend_after).plan_for
        """``RunHost``: the workflow compiled for execution, cached per version
        (``plans.PlanCache.plan_for``)."""
        self.alarm = Alarm()
        # the watchdog's probe: one key read on any store (a listing by status sorts, or
        # re-indexes, what it lists; the answer is not used, only whether one comes)
        self._stalls = StallWatch(lambda: store.get_run_by_idempotency_key(_PROBE_KEY))

    # ------------------------------------------------------------------ public API

    @property
    def active_runs(self) -> int:
        """Number of runs with a task in this engine right now."""
        return len(self._runs)

    @property
    def on_step_dispatched(self) -> StepDispatchedHook | None:
        """The hook given to ``open_engine`` (fixed for the engine's life: every run task
        holds it)."""
        return self._on_step_dispatched

    @property
    def on_step_finished(self) -> StepFinishedHook | None:
        """The hook given to ``open_engine`` (fixed for the engine's life)."""
        return self._on_step_finished

    async def start_run(self, workflow_id: str, run_id: str) -> None:
        """Start a created run (SPEC §3). Raises ``NotFoundError`` for a missing workflow
        or run; does nothing for a terminal run."""
        await self.store.get_workflow(workflow_id)
        await self._call(run_id, Start())

    async def handle_job_result(self, result: JobResult) -> None:
        """Fold a job result into its run (SPEC §6). Never raises for bad input: results
        with unusable job ids, for unknown or finished runs, stale or duplicate, are
        ignored."""
        run_id = run_id_of(result)
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
        return await create_rerun(self.store, self.clock, self._new_id, run_id, step_id,
                                  dry_run)

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
        ownership = self.ownership
        done = await submit_run(
            self.store, self.clock, self._new_id, workflow_id, input, org_id=org_id,
            team_id=team_id, idempotency_key=idempotency_key, labels=labels,
            dry_run=dry_run, triggered_by=triggered_by, create=ownership.create_run,
            # over a store whose first write of a run can create it, the run is not
            # written here: its start creates it, in one write (no key: a key's claim
            # needs the run written first)
            deferred=ownership.creates_on_write)
        if done.needs_start:
            if done.creating:  # the run task's first write, the start, creates the run
                if done.run_id in self._runs:  # (an id generator gave an id in use)
                    raise InvalidStateError(f"run {done.run_id!r} already exists")
                preload = Preload(done.created, done.workflow, done.creating)
            else:
                # The run task starts from what submit just read and wrote, not a re-read.
                # The run itself only when nothing can have reached it in between:
                # single-engine mode, or a lease taken with the create (else another engine
                # may take the run, or a Client command reach it, between the create and
                # the start).
                preload = Preload(ownership.fresh_run(done.created), done.workflow)
            await self._call(done.run_id, Start(), preload)
        return done.run_id

    async def run(self, workflow_id: str, input: dict[str, Any] | None = None,
                  **options: Any) -> WorkflowRun:
        """Submit, wait, and return the run if it succeeded; else raise
        ``RunFailedError`` (``cordtrio.engine.embedding.run_workflow``)."""
        poll_interval = options.pop("poll_interval", 1.0)
        run_id = await self.submit(workflow_id, input, **options)
        run = await self.wait_run(run_id, poll_interval=poll_interval)
        if run.status != RunStatus.SUCCEEDED:
            raise RunFailedError(run)
        return run

    async def wait_run(self, run_id: str, *, poll_interval: float = 1.0) -> WorkflowRun:
        """Return the run once it is terminal. Woken by this engine's run task; a run not
        active here (driven by another engine) is re-read every ``poll_interval`` s
        (``waits``: a run driven here is not read while it is unfinished, and a finished
        one is handed over by its task, not read back)."""
        return await self._waits.wait(run_id, poll_interval)

    # ------------------------------------------------------------------ routing

    async def _call(self, run_id: str, event: Event, preload: Preload | None = None) -> None:
        """Deliver ``event`` to the run's task and wait until it is applied."""
        for _ in range(3):
            reply = Reply()
            envelope = Envelope(event, done=reply)
            self.deliver(run_id, envelope, preload)
            preload = None  # a retry goes to a new task: it reads the store
            self._stalls.watch(reply, run_id, event)
            try:
                await reply.wait()  # or StoreError from the watchdog (``stalls``)
            finally:
                self._stalls.forget(reply)
            error = envelope.error
            if error is None:
                return
            if not isinstance(error, (Redirect, LeaseLostError)):
                raise error
            # the task ended just before our envelope; a new one takes it
        raise CordtrioError(f"run {run_id}: could not deliver {type(event).__name__}")

    def deliver(self, run_id: str, envelope: Item, preload: Preload | None = None) -> None:
        """Hand an envelope (or a bare event nobody waits for) to the run's task, activating
        one if needed (``preload``: what a new task may start from instead of reading the
        store). Never blocks."""
        task = self._runs.get(run_id)
        if task is None:
            if self._ended:  # the new task may change the run: forget its kept final run
                self._ended.pop(run_id, None)
            # (made at the first run: ``open_engine`` has set the ownership by then)
            wiring = self._wiring or self._wire()
            task = RunTask(self, run_id, preload, wiring)
            # Start first: on a closed engine start_soon raises, and a task registered but
            # never started would swallow every later envelope for the run (callers hang).
            self._nursery.start_soon(task.run, name=f"cordtrio-run:{run_id}")
            self._runs[run_id] = task
        task.mailbox.put(envelope)

    def _wire(self) -> RunWiring:
        self._wiring = wiring = RunWiring(self)
        return wiring

    def is_active(self, run_id: str) -> bool:
        return run_id in self._runs

    def _on_result(self, packet: BusPacket) -> None:
        """A packet of ``sys.job.result``: its payload, to ``_on_job_result`` (which
        reads nothing else of it)."""
        self._on_job_result(getattr(packet, "payload", None))

    def _on_job_result(self, result: Any) -> None:
        """A job result from the bus, to its run's task as it is (nobody waits for it: no
        envelope, no event built; the task hands it to the core's ``decide_result``). Every
        job step comes here, from ``_on_result`` or, on a bus in this process where the
        engine alone listens to results, straight from the worker with no packet built
        (``feeds.listen``'s ``on_payload``). A result whose run has a task here goes
        straight into its mailbox (the run id is the job id up to its last ``:``; a job
        id without one gives "": should a run "" have a task, its core ignores the
        result, as the general way does); anything else — no ``JobResult``, a run with no
        task here — takes ``_route_result``. Over a payload store read out of process, a
        succeeded result's output is read first (``_read_output``)."""
        try:
            task = self._runs[result.job_id.rpartition(":")[0]]
        except Exception:  # (AttributeError, TypeError, KeyError)
            self._route_result(result)
            return
        if result.__class__ is JobResult:  # (a subclass: the general way)
            if self._read_then is not None and result.status is _SUCCEEDED:
                self._read_output(task.mailbox, result)
            else:
                task.mailbox.put(result)
        else:
            self._route_result(result)

    def _read_output(self, mailbox: Mailbox, result: JobResult) -> None:
        """Have the output of a succeeded ``result`` read (SPEC §8) before its run task
        wakes, from a payload store whose read's reply can go to a callback
        (``StorePath.result_then``): the result waits in the mailbox as a ``ResultRead``,
        in its place, and the reply wakes the task with both (one wake-up per result
        instead of two). If the read cannot start (a pointer outside the payload
        namespace, a store not batching) the task is woken at once and reads it itself,
        as it does a bare result (one without a pointer, or not a string: at once).

        The key is the pointer's without its scheme (``key_from_pointer``'s), checked by
        the store's read itself (every payload store refuses a key outside its half of
        the namespace, ``check_payload_key``), not here first as well: a pointer it
        refuses is the task's to read, whose ``load_output`` says why."""
        ptr = result.result_ptr
        if not ptr or ptr.__class__ is not str:
            mailbox.put(result)
            return
        read = ResultRead(result, mailbox)
        mailbox.hold(read)
        try:
            started = self._read_then(  # type: ignore[misc]
                ptr[_SCHEME_LENGTH:] if ptr.startswith(POINTER_SCHEME) else ptr, read.loaded)
        except Exception:  # (a key outside ``res:``: ``PayloadPointerError``)
            started = False
        if not started:
            read.loaded(None)  # wakes the task, which reads it

    def _route_result(self, result: object) -> None:
        """``_on_job_result``'s general way: a result for a run without a task here starts
        one (which, in multi-engine mode, hands it to the run's owner), as a bare
        ``ResultReceived`` (a subclass of ``JobResult`` too); anything that is not a job
        result for a run is ignored."""
        if isinstance(result, JobResult):
            run_id = run_id_of(result)
            if run_id is not None:
                self.deliver(run_id, ResultReceived(result))

    # ------------------------------------------------------------------ RunHost

    def run_exited(self, task: object) -> None:
        if isinstance(task, RunTask) and self._runs.get(task.run_id) is task:
            del self._runs[task.run_id]
            self._waits.task_exited(task)

    async def load_run(self, run_id: str) -> WorkflowRun:
        return await load_run(self.store, run_id)

    async def mark_unreadable(self, run_id: str, error: Exception) -> bool:
        if not isinstance(error, CorruptDataError):
            return False
        return await fail_unreadable(self.store, run_id, error)

    @property
    def starts_reported(self) -> bool:
        """Workers report job starts (SPEC §13: over a bus with job queues, cordtrio's
        workers do): a step's ``timeout_sec`` counts from its job's start."""
        return isinstance(self.bus, JobBus)

    def _on_progress(self, packet: BusPacket) -> None:
        """A worker's start acknowledgement, to its run's task (SPEC §13)."""
        payload = getattr(packet, "payload", None)
        if isinstance(payload, JobProgress) and payload.status == JobStatus.RUNNING:
            run_id = run_id_of(payload)
            if run_id is not None:
                self.deliver(run_id, Envelope(JobStarted(payload.job_id)))


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
    engine_id: str | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    multi_engine: bool | None = None,
    resend_after: float = DEFAULT_RESEND_AFTER,
    tune_gc: bool = True,
) -> AsyncIterator[Engine]:
    """Open an engine over ``store`` and ``bus``.

    On entry it subscribes to job results (queue group ``cordtrio-workflow-engine``) and,
    with ``recover=True``, resumes every running or waiting run in the store (timers
    re-armed from ``next_attempt_at``, the current attempt of every running job published
    again: the bus ignores a job it still owns). Over a bus with job queues (``JobBus``),
    every ``resend_after`` seconds (default 60) each active run publishes again its jobs
    that have had no result for that long, so that a result lost with an engine (or a
    job lost with a restarted router) is run again (SPEC §13); 0 turns it off.
    Leaving the block cancels every run task; run state stays in the store for the next
    engine. ``new_id`` makes run ids deterministic (simulations); default ``uuid4``.

    Over a store implementing ``RunLeases`` (the Redis and memory stores) several engines
    may share the store: each run is driven by the engine holding its lease (``lease_ttl``
    seconds, renewed every third of it, released on exit); ``engine_id`` names this engine
    as lease owner (default: a random id). Recovery then activates only runs whose lease is
    free, and every ``lease_ttl/2`` the engine takes over runs whose owner died (not with
    ``recover=False``: such an engine only drives runs routed to it). See
    ``cordtrio.engine.leases``. ``multi_engine``: None (default) turns this mode on when
    the store supports it, unless the store says ``multi_engine_default = False`` (the
    memory store, normally alone with one engine in its process, says so) and no
    ``engine_id`` is given; False keeps an engine single-engine (no lease traffic); True
    requires the mode (``ValidationError`` if the store lacks it).

    ``tune_gc`` (default True): while the engine is open, CPython's cyclic garbage
    collector runs less often (generation 0 every 50,000 allocations instead of 700),
    undone when the last such engine closes (``cordtrio.engine.gc_tuning``). False leaves
    the collector alone.
    """
    if multi_engine is None:
        leases_on = isinstance(store, RunLeases) and (
            bool(engine_id) or bool(getattr(store, "multi_engine_default", True)))
    else:
        leases_on = multi_engine
    if leases_on and not isinstance(store, RunLeases):
        raise ValidationError(
            f"open_engine: multi_engine=True needs a store with run leases; "
            f"{type(store).__name__} does not implement cordtrio.ports.RunLeases")
    with long_lived_gc(tune_gc):
        async with open_service_nursery() as nursery:
            engine = Engine(
                nursery, store, bus, payloads=payloads, schemas=schemas, config=config,
                clock=clock or TrioWallClock(), on_step_dispatched=on_step_dispatched,
                on_step_finished=on_step_finished,
                new_id=new_id or random_run_id, engine_id=engine_id or "",
                resend_after=resend_after)
            if leases_on and isinstance(store, RunLeases):
                keeper = LeaseKeeper(store, store, engine, engine.engine_id, lease_ttl)
                engine.leases = keeper
                engine.ownership = keeper
            await engine.ownership.start(nursery)
            await nursery.start(engine._stalls.run)
            await nursery.start(engine.alarm.run)
            await nursery.start(partial(listen, bus, SUBJECT_RESULT, engine._on_result,
                                        on_payload=engine._on_job_result))
            if engine.starts_reported:
                await nursery.start(listen, bus, SUBJECT_PROGRESS, engine._on_progress)
            if engine.resend_after > 0:
                nursery.start_soon(resend_sweep, engine.resend_after, engine._runs,
                                   engine.deliver)
            if recover:
                # every started, non-terminal run in the store (SPEC §12); in multi-engine
                # mode those nobody holds (and runs with queued commands), again every ttl/2
                await engine.ownership.recover(nursery)
            yield engine
