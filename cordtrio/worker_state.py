"""What a worker is and holds, apart from how its slots run jobs (``worker.py``).

``WorkerState`` is the base of ``Worker``: its identity and settings, its counters, the
registry of the jobs in progress, and their cancellation (``cancel_job``, a job the bus
took back, ``JobCancel`` messages from ``sys.job.cancel``), and the report of a job whose
result write answers by callback (``_stored``). Kept apart so that
``worker.py`` holds the serving side only: the slot tasks, where every job runs, and
``open_worker`` / ``serve_worker``.
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
        self._slots = 0
        """Slot tasks alive: started as they are needed (see ``Worker._slot`` and
        ``Worker._add_slots``)."""
        self._grow_at = 0
        """Jobs running when every slot is busy: the slots alive, less those awaiting the
        bus to publish a result (the others run a job, registered in ``_jobs``, or wait
        for one). A slot that starts a job and finds this many running starts one more,
        while there is room for one."""
        # Trio's clock, asked directly (set when serving starts): two frames fewer than
        # ``trio.current_time()`` at each job's start and report. Only durations are taken
        # from it (``execution_ms``), so Trio's own clock is ``perf_counter`` (its offset
        # cancels out): no frame at all.
        self._now: Callable[[], float] = trio.current_time
        self._tasks: trio.Nursery | None = None
        """Where a result whose write failed is written again and reported (``Worker.
        _stored``): the serving nursery, while the slots run."""

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
        """Jobs in progress now: those registered for ``cancel_job`` (counted by the map
        that holds them, not beside it)."""
        return len(self._jobs)

    @property
    def topics(self) -> frozenset[str]:
        """The topics this worker has handlers for."""
        return frozenset(self._handlers)

    def cancel_job(self, job_id: str, reason: str = "") -> bool:
        """Cancel a running job (reported as CANCELLED). False if it is not running here."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        if entry.reason is None:
            entry.reason = reason or ""
        entry.scope.cancel()
        return True

    def _job_lost(self, job_id: str) -> None:
        """The bus handed ``job_id`` to another worker: stop it here, report nothing."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        entry.lost = True
        if entry.reason is None:
            entry.reason = "the bus took the job back"
        entry.scope.cancel()

    def _stored(self, trace_id: str, job_id: str, started: float, key: str, body: Any,
                reply: Any) -> None:
        """The reply of a job's result write (``put_result_then``): report the job as its
        slot would have (None: the write failed, and is awaited again: waited out, or the
        job's failure). Nothing once the worker has stopped serving: the job was not
        acknowledged, so the bus hands it to another worker."""
        tasks = self._tasks
        if tasks is None:
            return
        if reply is None:
            tasks.start_soon(self._store_again, trace_id, job_id, started, key, body)
            return
        result = _new(JobResult)  # ``JobResult(job_id, SUCCEEDED, ptr)``, as the slot does
        result.job_id = job_id
        result.status = _SUCCEEDED
        result.result_ptr = POINTER_SCHEME + key
        result.error_code = result.error_message = ""
        result.artifact_ptrs = []
        publishing = self._report(trace_id, started, result)
        if publishing is not None:
            tasks.start_soon(self._published, publishing)

    async def _store_again(self, trace_id: str, job_id: str, started: float, key: str,
                           body: Any) -> None:
        """A result write that failed (``_stored``), awaited once more, then reported: a
        store that cannot be reached is waited out, a definite error is the job's."""
        runner = self._runner
        try:
            try:
                await runner.put_result(key, body)
            except Exception as exc:
                await runner.store_result(key, body, job_id, exc)
            result = JobResult(job_id, _SUCCEEDED, POINTER_SCHEME + key)
        except JobFailed as failed:
            result = failed.result
        publishing = self._report(trace_id, started, result)
        if publishing is not None:
            await self._published(publishing)

    async def _published(self, publishing: Awaitable[None]) -> None:
        """Await a result's publish that the bus did not take at once (``Reporter.
        report``): its slot counts as busy meanwhile (``_grow_at``), so a slow bus slows
        intake through it (a result taken at once frees its slot at once)."""
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


__all__ = ["DEFAULT_PREFETCH", "WorkerState"]
