"""What a worker is and holds, apart from how its slots run jobs (``worker.py``).

``WorkerState`` is the base of ``Worker``: its identity and settings, its counters, the
registry of the jobs in progress, and their cancellation (``cancel_job``, a job the bus
took back, ``JobCancel`` messages from ``sys.job.cancel``), and the report of a job whose
result write answers by callback (``_stored``), registered (``_writing``) until then.
Kept apart so that ``worker.py`` holds the serving side only: the slot tasks, where
every job runs, and ``open_worker`` / ``serve_worker``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from .job import Handler
from .payloads import POINTER_SCHEME
from .ports import Bus, PayloadStore
from .protocol import BusPacket, JobCancel, JobResult, JobStatus
from .worker_jobs import JobFailed, JobRunner
from .worker_report import Reporter

_SUCCEEDED = JobStatus.SUCCEEDED  # a module global: reading the enum member costs a call
_new = object.__new__

DEFAULT_PREFETCH = 4
"""Jobs a worker holds beyond ``max_concurrency`` (SPEC §13: a small, bounded prefetch)."""


class _Running:
    """A job in progress: the cancel scope that stops it (its slot's, see ``Worker._slot``)
    and the reason once cancelled.

    One per turn of a slot (one cancel scope), registered for each job the turn runs, one
    after the other. A turn ends when its job is cancelled, so ``reason`` and ``lost`` are
    set at most once."""

    __slots__ = ("lost", "reason", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.reason: str | None = None
        self.lost = False  # the bus took the job back: stop without reporting


class WorkerState:
    """A worker's identity, counters, and the jobs it is executing (the base of
    ``Worker``, which serves them).

    Counters: ``handled`` (jobs finished with any status), ``succeeded``, ``failed`` (finished
    with any other status: failed, denied, timeout, cancelled) and ``running`` (in progress
    now). Jobs interrupted by the worker's own shutdown are not counted as handled.
    """

    def __init__(
        self,
        bus: Bus,
        payloads: PayloadStore,
        handlers: Mapping[str, Handler],
        *,
        worker_id: str,
        max_concurrency: int,
        queue: str,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.worker_id = worker_id
        self.queue = queue
        self.max_concurrency = max_concurrency
        self.prefetch = prefetch
        self.lost = 0
        """Jobs the bus took back from this worker (its connection was reset)."""
        self._bus = bus
        self._runner = JobRunner(payloads, worker_id)
        self._reporter = reporter = Reporter(bus, worker_id)
        self._report = reporter.report
        self._handlers = dict(handlers)
        self._jobs: dict[str, _Running] = {}
        self._writing: dict[str, Callable[[Any], None]] = {}
        """Jobs whose handler returned and whose result is being written, reported by the
        write's reply (``_stored``, the callback each maps to): still in progress, so
        ``cancel_job`` and a job the bus took back find them, and a worker that stops
        when its submit channel ends waits for them (``_drain``). On a ``JobBus``, at
        most its capacity of unacknowledged jobs (``max_concurrency + prefetch``)."""
        self._drained: trio.Event | None = None
        """Set once ``_writing`` is empty, when ``_drain`` waits for it."""
        self._slots = 0
        """Slot tasks alive: started as they are needed (see ``Worker._slot`` and
        ``Worker._add_slots``)."""
        self._grow_at = 0
        """Jobs running in slots (``_jobs``) when every slot is busy: the slots alive, less
        those awaiting the bus to publish their job's result (the others run a job,
        registered in ``_jobs``, or wait for one). A slot that starts a job and finds this
        many running starts one more, while there is room for one. A result written and
        reported by callback (``_writing``) holds no slot, and counts for nothing here."""
        # Trio's clock, asked directly (set when serving starts): two frames fewer than
        # ``trio.current_time()`` at each job's start and report. Only durations are taken
        # from it (``execution_ms``), so Trio's own clock is ``perf_counter`` (its offset
        # cancels out): no frame at all.
        self._now: Callable[[], float] = trio.current_time
        self._tasks: trio.Nursery | None = None
        """Where a result whose write answered is published, or written again and reported
        (``Worker._stored``): a nursery of the worker's own, while it serves (until every
        write in flight has answered, when it stops as its submit channel ends)."""

    @property
    def succeeded(self) -> int:
        """Jobs finished with status succeeded."""
        return self._reporter.succeeded

    @property
    def failed(self) -> int:
        """Jobs finished with any other status: failed, denied, timeout, cancelled."""
        return self._reporter.failed

    @property
    def handled(self) -> int:
        """Jobs finished with any status: ``succeeded + failed`` (counted once, by status)."""
        return self.succeeded + self.failed

    @property
    def running(self) -> int:
        """Jobs in progress now: those registered for ``cancel_job`` (counted by the maps
        that hold them, not beside them): running, or their result being written."""
        return len(self._jobs) + len(self._writing)

    @property
    def topics(self) -> frozenset[str]:
        """The topics this worker has handlers for."""
        return frozenset(self._handlers)

    def cancel_job(self, job_id: str, reason: str = "") -> bool:
        """Cancel a running job (reported as CANCELLED). False if it is not running here.

        A job is running until it is reported: a job whose handler returned and whose
        result is still being written (``_writing``) is reported CANCELLED at once, as
        one whose write is awaited in its slot is (the write is not taken back: its reply
        reports nothing). Once reported, a cancel comes too late: False."""
        entry = self._jobs.get(job_id)
        if entry is None:
            done = self._writing.get(job_id)
            if done is None:
                return False
            self._written(job_id)
            trace_id, _, started = done.args[:3]  # type: ignore[attr-defined]
            result = JobResult(job_id, JobStatus.CANCELLED, error_code="JobCancelled",
                               error_message=f"cancelled: {reason or 'no reason given'}")
            publishing = self._report(trace_id, started, result)
            if publishing is not None and self._tasks is not None:
                self._tasks.start_soon(_awaited, publishing)
            return True
        if entry.reason is None:
            entry.reason = reason or ""
        entry.scope.cancel()
        return True

    def _job_lost(self, job_id: str) -> None:
        """The bus handed ``job_id`` to another worker: stop it here, report nothing."""
        entry = self._jobs.get(job_id)
        if entry is None:
            if job_id in self._writing:  # its result is not reported (the write goes on)
                self._written(job_id)
                self.lost += 1
            return
        entry.lost = True
        if entry.reason is None:
            entry.reason = "the bus took the job back"
        entry.scope.cancel()

    def _stored(self, trace_id: str, job_id: str, started: float, key: str, body: Any,
                reply: Any) -> None:
        """The reply of a job's result write (``put_result_then``): report the job as its
        slot would have (None: the write failed, and is awaited again: waited out, or the
        job's failure). Nothing for a job no longer registered (``_writing``): cancelled
        (reported so already), taken back by the bus, or the worker was cancelled (not
        acknowledged: the bus hands the job to another worker)."""
        writing, tasks = self._writing, self._tasks  # (``_tasks`` set while jobs are)
        if job_id not in writing or tasks is None:
            return
        if reply is None:  # (still registered meanwhile)
            tasks.start_soon(self._store_again, trace_id, job_id, started, key, body)
            return
        del writing[job_id]
        if not writing and self._drained is not None:
            self._drained.set()
        result = _new(JobResult)  # ``JobResult(job_id, SUCCEEDED, ptr)``, as the slot does
        result.job_id = job_id
        result.status = _SUCCEEDED
        result.result_ptr = POINTER_SCHEME + key
        result.error_code = result.error_message = ""
        result.artifact_ptrs = []
        publishing = self._report(trace_id, started, result)
        if publishing is not None:  # (holding no slot: ``_grow_at`` is not lowered)
            tasks.start_soon(_awaited, publishing)

    async def _store_again(self, trace_id: str, job_id: str, started: float, key: str,
                           body: Any) -> None:
        """A result write that failed (``_stored``), awaited once more, then reported: a
        store that cannot be reached is waited out, a definite error is the job's. Not
        reported if the job was cancelled or taken back meanwhile."""
        runner = self._runner
        try:
            try:
                await runner.put_result(key, body)
            except Exception as exc:
                await runner.store_result(key, body, job_id, exc)
            result = JobResult(job_id, _SUCCEEDED, POINTER_SCHEME + key)
        except JobFailed as failed:
            result = failed.result
        if job_id not in self._writing:
            return
        self._written(job_id)
        publishing = self._report(trace_id, started, result)
        if publishing is not None:
            await publishing

    def _written(self, job_id: str) -> None:
        """``job_id``'s result write is no longer awaited (``_writing``)."""
        writing = self._writing
        del writing[job_id]
        if not writing and self._drained is not None:
            self._drained.set()

    async def _drain(self) -> None:
        """Wait until every result being written is reported (``_writing``; the worker
        stops as its submit channel ended)."""
        if self._writing:
            self._drained = trio.Event()
            await self._drained.wait()

    async def _published(self, publishing: Awaitable[None]) -> None:
        """Await a result's publish that the bus did not take at once (``Reporter.
        report``) in a slot: the slot counts as busy meanwhile (``_grow_at``), so a slow
        bus slows intake through it (a result taken at once, or reported by a write's
        callback, frees its slot at once)."""
        self._grow_at -= 1
        try:
            await publishing
        finally:
            self._grow_at += 1

    async def _listen_cancels(self, cancels: trio.abc.ReceiveChannel[BusPacket]) -> None:
        """Cancel the jobs that ``JobCancel`` messages on ``sys.job.cancel`` name."""
        async for packet in cancels:
            payload = packet.payload
            if isinstance(payload, JobCancel):
                self.cancel_job(payload.job_id, payload.reason)


async def _awaited(publishing: Awaitable[None]) -> None:
    """A result's publish (``Reporter.report``) awaited in a task of its own."""
    await publishing


__all__ = ["DEFAULT_PREFETCH", "WorkerState"]
