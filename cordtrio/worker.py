"""The worker side: consume job requests from the bus, run user handlers, report results.

This module is the worker's serving side: ``open_worker`` / ``serve_worker`` and the slot
tasks, where every job runs (``worker_state`` holds what the worker is: its settings,
counters, and the jobs in progress with their cancellation; ``worker_jobs`` runs the rest
of a job, ``worker_report`` hands its result over).

A worker is a bus, a payload store and a mapping ``topic -> async handler``::

    async def resize(job: Job) -> dict: ...

    async with open_worker(bus, payloads, {"job.images.resize": resize}, worker_id="w1"):
        ...

For every ``JobRequest`` on ``sys.job.submit`` whose topic has a handler, the worker loads the
input payload, runs the handler under the job's budget deadline, stores the JSON return value
at ``res:<job_id>``, publishes a ``JobResult`` on ``sys.job.result`` and then acknowledges
the job to the bus (SPEC §13: until then the bus owns it, and hands it to another worker if
this one is lost — a handler may therefore run more than once for one attempt). A ``JobCancel`` on
``sys.job.cancel`` cancels the matching handler. Nothing a handler or a backend does can kill
the worker; only leaving the ``async with`` block (or cancelling ``serve_worker``) stops it.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from time import perf_counter
from typing import Any

import trio
from trio.lowlevel import checkpoint_if_cancelled

from ._nursery import open_service_nursery
from .clock import perf_counter_offset
from .engine.gc_tuning import long_lived_gc
from .job import Handler, Job, JobDenied, item_of
from .json_payloads import JsonPayload
from .payloads import POINTER_SCHEME, RESULT_PREFIX, key_from_pointer
from .ports import Bus, JobBus, PayloadStore
from .protocol import (
    SUBJECT_CANCEL,
    SUBJECT_SUBMIT,
    BusPacket,
    JobRequest,
    JobResult,
    JobStatus,
)
from .worker_jobs import JobFailed, invalid_input
from .worker_state import DEFAULT_PREFETCH, WorkerState, _Running

logger = logging.getLogger("cordtrio.worker")

_SUCCEEDED = JobStatus.SUCCEEDED  # a module global: reading the enum member costs a call
_new = object.__new__

QUEUE_PREFIX = "cordtrio-worker:"

_UNCHECKED_JOBS = 7
"""Buffered jobs a slot takes one after the other without a cancellation check between
them (``Worker._slot``): at most this many more run once the slot is cancelled."""

class Worker(WorkerState):
    """A running worker: identity, counters, and the jobs it is executing (``WorkerState``),
    served by up to ``max_concurrency`` slot tasks (``_slot``).

    Counters: ``handled`` (jobs finished with any status), ``succeeded``, ``failed`` (finished
    with any other status: failed, denied, timeout, cancelled) and ``running`` (in progress
    now). Jobs interrupted by the worker's own shutdown are not counted as handled.
    """

    # ------------------------------------------------------------------------- serving

    def _submits(self) -> AbstractAsyncContextManager[Any]:
        """Where jobs come from: the bus's job queues (acknowledged, at-least-once) when it
        has them, else a queue-group subscription to ``sys.job.submit``."""
        if isinstance(self._bus, JobBus):
            return self._bus.consume_jobs(self.topics,
                                          capacity=self.max_concurrency + self.prefetch)
        return self._bus.subscribe(SUBJECT_SUBMIT, queue=self.queue)

    async def _serve(self, task_status: trio.TaskStatus[Worker]) -> None:
        self._now = self._reporter.now = _duration_clock(trio.lowlevel.current_clock())
        async with (
            self._submits() as submits,
            self._bus.subscribe(SUBJECT_CANCEL) as cancels,
            trio.open_nursery() as nursery,
        ):
            if isinstance(self._bus, JobBus):
                self._reporter.take_inbox(submits)
                submits.on_lost = self._job_lost
                if hasattr(submits, "bare_jobs"):  # (``LocalJobInbox``: see ``_slot``)
                    submits.bare_jobs = True
            nursery.start_soon(self._listen_cancels, cancels)
            # (the reports of results written by callback: ``_stored``)
            async with trio.open_nursery() as self._tasks:
                try:
                    task_status.started(self)
                    async with trio.open_nursery() as slots:
                        self._add_slots(submits, slots, 1)  # the others as jobs need them
                    await self._drain()  # the results still being written, reported
                finally:
                    self._tasks = None
                    self._writing.clear()  # (cancelled: their replies report nothing)
            # The submit channel ended (bus closed) and every job has reported: stop.
            nursery.cancel_scope.cancel()

    def _add_slots(self, submits: trio.abc.ReceiveChannel[BusPacket],
                   slots: trio.Nursery, n: int) -> None:
        """Start ``n`` more slots, as far as ``max_concurrency`` allows."""
        for _ in range(min(n, self.max_concurrency - self._slots)):
            self._slots += 1
            self._grow_at += 1
            slots.start_soon(self._slot, submits, slots)

    async def _slot(self, submits: trio.abc.ReceiveChannel[BusPacket],
                    slots: trio.Nursery) -> None:
        """One of up to ``max_concurrency`` long-lived tasks: takes a job request from the
        bus only when idle (so jobs this worker cannot start yet stay with the bus, and
        with other members of the queue group), runs it, reports it, and takes the next;
        until the submit channel ends.

        Slots are started as they are needed, not all at once: a slot that takes a job
        while no other slot is idle starts one more (up to ``max_concurrency``), so one
        always waits for the next job while there is room for it, or, with jobs buffered,
        one per buffered job up to doubling the slots (doubling them on an inbox that does
        not show its buffer). Handlers that never wait (most of
        them, in a burst) are all run by the first slot or two, one after the other; a
        worker whose handlers wait grows to its concurrency in a few scheduling rounds.
        Starting, and at the end cancelling, a slot costs more than the no-op jobs it
        would run.

        Its jobs share one cancel scope (entering and leaving a scope costs more than the
        rest of a no-op job): ``cancel_job`` cancels it, which stops exactly the job it
        covers then, because a job is registered (and cancellable) only while it runs. The
        cancelled job is reported once out of the scope, and the slot goes on in a new one.

        Every job starts in the slot's original context, as a task of its own would: a
        handler that sets context variables (``structlog.bind_contextvars``, tracing) makes
        its slot hand over to a fresh one started from that context, and end.

        One coroutine, the job loop inlined in the scope loop: a slot waits for every job,
        and each frame between the task and its wait is resumed and left again each time.
        """
        clean = contextvars.copy_context()
        handlers = self._handlers
        running = self._jobs
        # A burst already buffered is taken without a schedule point: from the inbox's
        # ``ready`` jobs (``LocalJobInbox``), with a cancellation check before every
        # ``_UNCHECKED_JOBS + 1``-th of them, else by ``receive_nowait`` first, or by
        # ``receive`` itself on an inbox that does so (no ``WouldBlock`` raised and caught
        # on every job that finds the inbox empty)
        ready = getattr(submits, "ready", None)
        unchecked = 0  # ready jobs the slot may still take before its next check
        receive_nowait = None if ready is not None \
            or getattr(submits, "receive_takes_ready_job", False) \
            else getattr(submits, "receive_nowait", None)
        receive = submits.receive
        # what the inbox hands over for a job request kept bare (``_serve`` asks for them)
        bare_job = getattr(submits, "bare_job_type", None)
        now = self._now
        runner = self._runner
        reporter, worker_id = self._reporter, self.worker_id
        # (set before the first slot starts; a stand-in saying "not now" without it)
        report_now = reporter.report_now or _not_now
        input_now, read_now = runner.input_now, runner.read_input_now
        context_at, of_text = runner.context_at, JsonPayload.of_text
        store_now = runner.store_result_now
        put_then, encode = runner.put_result_then, runner.encode
        stored, writing = self._stored, self._writing
        while True:
            with trio.CancelScope() as scope:
                entry = _Running(scope)
                while True:  # jobs, until the scope is cancelled or the context changed
                    try:
                        if ready:
                            # A cancellation check before one ready job in so many, not
                            # before every one (a check costs more than a no-op job): a
                            # slot running an endless burst of jobs that never wait still
                            # stops within ``_UNCHECKED_JOBS`` jobs once cancelled (a job
                            # that waits, or a slot that parks, meets a check anyway)
                            if unchecked:
                                unchecked -= 1
                            else:
                                await checkpoint_if_cancelled()
                                unchecked = _UNCHECKED_JOBS
                            packet = ready.popleft()  # (not empty: nothing ran since)
                        elif receive_nowait is None:
                            packet = await receive()
                        else:
                            try:
                                packet = receive_nowait()
                            except trio.WouldBlock:
                                packet = await receive()
                    except trio.EndOfChannel:
                        self._slots -= 1
                        self._grow_at -= 1
                        return
                    if packet.__class__ is bare_job:
                        # a job request the bus kept bare (``LocalJobInbox.bare_jobs``):
                        request = packet.item  # the bus's job, ``trace_id`` beside it
                    else:
                        request = packet.payload
                        if not isinstance(request, JobRequest):
                            continue
                    handler = handlers.get(request.topic)
                    if handler is None:  # a job for another worker's topic set
                        continue
                    job_id = request.job_id
                    if job_id in running:
                        # A duplicate delivery of a job in progress here: its result is
                        # coming.
                        logger.debug("worker %s: duplicate of running job %s dropped",
                                     self.worker_id, job_id)
                        continue
                    started = now()
                    running[job_id] = entry  # registered now, so an early cancel finds it
                    # no other slot is idle, and one more may start (a saturated worker,
                    # every slot started, does not ask on every job)
                    if len(running) >= self._grow_at and self._slots < self.max_concurrency:
                        # one waits for the next job; as many as are buffered, up to
                        # twice the slots, when handlers wait (else they would not all
                        # be busy): a burst of waiting jobs starts in a few rounds (twice
                        # the slots when the inbox does not show what it buffers)
                        self._add_slots(submits, slots, self._slots if ready is None
                                        else max(1, min(len(ready), self._slots)))
                    # The job, the common way here (no frame of its own): its input, its
                    # handler, its output stored; anything else is ``runner``'s, and every
                    # failure a ``JobFailed`` with its result.
                    try:
                        budget = request.budget
                        if budget is None:
                            deadline_ms = 0
                        else:  # a step with a timeout: the engine times it from its start
                            # (reported even for a deadline under a millisecond, 0 here)
                            deadline_ms = budget.deadline_ms
                            await reporter.report_start(packet.trace_id, job_id)
                        ptr = request.context_ptr
                        data: Any
                        if ptr:
                            try:  # an in-process snapshot's value, in one call
                                data = input_now(ptr) if input_now is not None else None
                            except Exception:  # (its errors are the general read's)
                                data = None
                        else:  # no input: an empty one
                            data = {}
                        if data.__class__ is not dict:  # else: the payload, then its value
                            try:  # an in-process store: no await; else the store's own
                                if read_now is not None:
                                    raw = read_now(ptr)
                                elif context_at is not None:  # by its pointer, in one call
                                    raw = of_text(await context_at(ptr))
                                else:
                                    raw = await runner.get_context(key_from_pointer(ptr))
                            except Exception as exc:  # waited out, or the job's failure
                                raw = await runner.load_input(request, exc)
                            try:
                                data = raw.value()
                            except ValueError as exc:
                                raise invalid_input(request,
                                                    f"is not valid JSON: {exc}") from None
                            if data.__class__ is not dict and not isinstance(data, dict):
                                raise invalid_input(
                                    request, "is not a JSON object "
                                    f"(got {type(data).__name__})")
                        # ``Job(request, data, item)``, its fields set one by one (a third
                        # less than ``__init__``; tests/worker/test_worker_results.py
                        # compares them), ``item_of`` only when there is an item to find
                        # (most jobs have none)
                        job = _new(Job)
                        job.request = request
                        job.input = data
                        job.item = item_of(request, data) \
                            if "item" in data or "foreach_item" in request.env else None
                        if deadline_ms <= 0:
                            try:
                                output = await handler(job)
                            except Exception as exc:
                                raise JobFailed(runner.handler_failed(request, exc)) \
                                    from None
                        else:
                            output = await runner.run_with_deadline(handler, job,
                                                                    deadline_ms)
                        key = RESULT_PREFIX + job_id  # ``result_key``, without the call
                        try:  # out of process: encoded, then written; else in one call
                            if store_now is None:
                                body = encode(output, False)
                                # reported by the write's reply (``_stored``), the slot
                                # free for its next job meanwhile; else awaited here. Not
                                # for a job cancelled already (its handler swallowed it):
                                # that one is reported cancelled, below.
                                # Registered as being written first (``_writing``:
                                # ``finally`` unregisters it as running).
                                if put_then is not None and entry.reason is None:
                                    writing[job_id] = done = partial(
                                        stored, packet.trace_id, job_id, started, key, body)
                                    if put_then(key, body, done):
                                        if contextvars.copy_context() == clean:
                                            continue
                                        break  # the context changed: a clean slot goes on
                                    del writing[job_id]
                                await runner.put_result(key, body)
                            else:
                                store_now(key, output)
                        except Exception as exc:  # the encoding's or the store's: told apart
                            writing.pop(job_id, None)  # (a ``put_then`` that raised)
                            await runner.store_output(key, output, job_id, exc)
                        # its fields set one by one (``pointer_for_key`` without the
                        # call), as ``JobResult(job_id, SUCCEEDED, ptr)`` sets them: a
                        # third less than ``__init__`` (tests/worker/test_worker_results.py
                        # compares them); ``worker_id`` and ``execution_ms`` are set
                        # below, as ``Reporter.report`` sets them
                        result = _new(JobResult)
                        result.job_id = job_id
                        result.status = _SUCCEEDED
                        result.result_ptr = POINTER_SCHEME + key
                        result.error_code = result.error_message = ""
                        result.artifact_ptrs = []
                    except JobFailed as failed:
                        result = failed.result
                    finally:
                        del running[job_id]
                    # Cancelled, and the handler swallowed the Cancelled: ``cancel_job`` and
                    # ``_job_lost`` give a reason before they cancel (cheaper than the
                    # scope's ``cancel_called``, which reads the clock).
                    if entry.reason is not None:
                        break
                    # ``Reporter.report`` without its frame (every job): stamped, counted,
                    # and handed to the bus's one listener of results and acknowledged in
                    # one call (``report_now``) when it can; else published in a packet
                    # (tests/worker/test_worker_results.py compares the two ways)
                    result.worker_id = worker_id
                    result.execution_ms = int((now() - started) * 1000)
                    if result.status is _SUCCEEDED:
                        reporter.succeeded += 1
                    else:
                        reporter.failed += 1
                    try:
                        reported = report_now(result)
                    except Exception:
                        reporter.not_published(result)
                        reported = True
                    if not reported:
                        # Awaited only when the bus did not take the result at once (no
                        # ``publish_now``, or it refused: on nng, every in-flight slot
                        # taken): then the slot is busy until the bus has it
                        # (``_grow_at``), and a slow bus slows intake. A result handed over
                        # at once (``report_now``; nng's ``publish_now``, settled later by
                        # the router's confirmation) or written by callback (``put_then``
                        # above, reported by ``_stored``) leaves the slot free for its next
                        # job at once: a slow bus or store then keeps those jobs
                        # unacknowledged, within the job inbox's capacity.
                        publishing = reporter.publish(packet.trace_id, result)
                        if publishing is not None:  # ``_published``, without its frame
                            self._grow_at -= 1
                            try:
                                await publishing
                            finally:
                                self._grow_at += 1
                    if contextvars.copy_context() != clean:
                        break
            # Left with a reason: the job in progress was cancelled (only a running job can
            # be, and it is given its reason first), even if its handler swallowed the
            # Cancelled; else the context changed after a job.
            if entry.lost:  # taken back by the bus: another worker runs it
                self.lost += 1
            elif entry.reason is not None:
                result = JobResult(
                    job_id,
                    JobStatus.CANCELLED,
                    error_code="JobCancelled",
                    error_message=f"cancelled: {entry.reason or 'no reason given'}",
                )
                publishing = self._report(packet.trace_id, started, result)
                if publishing is not None:
                    await self._published(publishing)
            if contextvars.copy_context() != clean:
                clean.run(slots.start_soon, self._slot, submits, slots)  # a clean slot
                return


def _not_now(result: JobResult) -> bool:
    """``report_now`` of an inbox or a bus that cannot hand a result over bare: publish
    it in a packet."""
    return False


def _duration_clock(clock: trio.abc.Clock) -> Callable[[], float]:
    """What a worker times jobs with: Trio's clock (a ``MockClock`` in tests), or, for
    Trio's own ``SystemClock`` (``offset + perf_counter()``), ``perf_counter`` itself: a
    duration is the same on both, and a C function runs no Python frame."""
    return clock.current_time if perf_counter_offset(clock) is None else perf_counter


def default_queue(topics: Mapping[str, Any] | frozenset[str]) -> str:
    """The queue group of a worker serving ``topics``: workers with the same topic set share
    jobs between them, workers with different sets each see every job."""
    return QUEUE_PREFIX + ",".join(sorted(topics))


def _make_worker(
    bus: Bus,
    payloads: PayloadStore,
    handlers: Mapping[str, Handler],
    worker_id: str,
    max_concurrency: int,
    queue: str | None,
    prefetch: int = DEFAULT_PREFETCH,
) -> Worker:
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be at least 0, got {prefetch}")
    if not handlers:
        raise ValueError("a worker needs at least one topic handler")
    return Worker(
        bus,
        payloads,
        handlers,
        worker_id=worker_id or f"worker-{uuid.uuid4().hex[:12]}",
        max_concurrency=max_concurrency,
        queue=default_queue(handlers) if queue is None else queue,
        prefetch=prefetch,
    )


async def serve_worker(
    bus: Bus,
    payloads: PayloadStore,
    handlers: Mapping[str, Handler],
    *,
    worker_id: str = "",
    max_concurrency: int = 64,
    queue: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    tune_gc: bool = True,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker until cancelled; for ``nursery.start``, which returns the ``Worker``
    once both subscriptions are active. Returns on its own only if the bus closes the
    submit channel (after the jobs in progress have reported, the results still being
    written once they are stored). ``tune_gc`` as for
    ``open_worker``."""
    worker = _make_worker(bus, payloads, handlers, worker_id, max_concurrency, queue,
                          prefetch)
    with long_lived_gc(tune_gc):
        await worker._serve(task_status)


@asynccontextmanager
async def open_worker(
    bus: Bus,
    payloads: PayloadStore,
    handlers: Mapping[str, Handler],
    *,
    worker_id: str = "",
    max_concurrency: int = 64,
    queue: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    tune_gc: bool = True,
) -> AsyncIterator[Worker]:
    """Serve ``handlers`` for the duration of the block and yield the ``Worker``.

    The subscriptions are active when the body starts, so nothing published from the body
    is missed. On a ``JobBus`` (``MemoryBus``, nng) the worker consumes one job queue per
    topic of ``handlers`` and holds at most ``max_concurrency + prefetch`` jobs; on another
    bus it joins the queue group ``queue`` (default ``default_queue(handlers)``) of
    ``sys.job.submit``. ``worker_id`` defaults to a random ``worker-<hex>``. Leaving the
    block cancels the handlers still running and the results still being written (no
    result is published for them: their jobs go back to the bus for another worker) and
    unsubscribes.

    ``tune_gc`` (default True): while the worker serves, CPython's cyclic garbage collector
    runs less often, as while an engine is open (``open_engine(tune_gc=...)``,
    ``cordtrio.engine.gc_tuning``; undone when the last such engine or worker closes). A
    worker allocates a few dozen short-lived objects per job: with the default thresholds
    the collector took ~15 % of a worker process's CPU. False leaves the collector alone.
    """
    worker = _make_worker(bus, payloads, handlers, worker_id, max_concurrency, queue,
                          prefetch)
    with long_lived_gc(tune_gc):
        async with open_service_nursery() as nursery:
            await nursery.start(worker._serve)  # subscriptions active from here on
            yield worker


__all__ = ["Handler", "Job", "JobDenied", "Worker", "default_queue", "open_worker",
           "serve_worker"]
