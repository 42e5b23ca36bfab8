"""A worker's reporting: handing a job's start and result over to the bus, then
acknowledging the job (SPEC §13: until the result is handed over the bus owns the job), and
counting results by status (see ``worker.py`` for the worker around it)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import trio

from .ports import Bus, own_call
from .protocol import (
    PROTOCOL_VERSION,
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    BusPacket,
    JobProgress,
    JobResult,
    JobStatus,
)

logger = logging.getLogger("cordtrio.worker")

_SUCCEEDED = JobStatus.SUCCEEDED  # a module global: reading the enum member costs a call


class Reporter:
    """Publishes one worker's job starts and results, and acknowledges its jobs.

    Counters: ``succeeded`` and ``failed`` (any other status), counted as results are
    reported."""

    def __init__(self, bus: Bus, worker_id: str) -> None:
        self.worker_id = worker_id
        self.succeeded = 0
        self.failed = 0
        self._bus = bus
        # an in-process bus's own delivery, tried before awaiting ``publish`` (``PublishNow``)
        self._publish_now = own_call(bus, "publishes_now", "publish_now")
        # a result it takes carries its job's acknowledgement (nng): no ``ack`` after it
        self._ack_after_now = not getattr(bus, "acks_results_now", False)
        self.ack: Callable[[str], None] | None = None
        """The job inbox's ``ack`` on a ``JobBus`` (set once serving starts)."""
        self.report_now: Callable[[JobResult], bool] | None = None
        """The job inbox's ``report_now`` (hand a bare result to the bus's one listener
        of results and ack its job in one call), when it has one and the bus offers
        ``publish_now`` itself (set once serving starts)."""
        self.now: Callable[[], float] = trio.current_time
        """What jobs are timed with (``execution_ms``): set once serving starts."""

    def take_inbox(self, inbox: object) -> None:
        """Acknowledge jobs through ``inbox``, a ``JobBus``'s job inbox; and report through
        it in one call when it can and the bus's ``publish_now`` is its own (not through a
        wrapper: it must see each result)."""
        self.ack = inbox.ack  # type: ignore[attr-defined]
        if self._publish_now is not None:
            self.report_now = getattr(inbox, "report_now", None)

    async def report_start(self, trace_id: str, job_id: str) -> None:
        """Tell the engine the job started (SPEC §6: a step's timeout counts from here, not
        from its dispatch). Only jobs with a deadline need it, so only they pay for it."""
        progress = JobProgress(job_id, status=JobStatus.RUNNING,
                               message=f"started by {self.worker_id}")
        packet = BusPacket(trace_id, self.worker_id, datetime.now(UTC), PROTOCOL_VERSION,
                           progress)
        try:
            await self._bus.publish(SUBJECT_PROGRESS, packet)
        except Exception:
            logger.warning("worker %s: publishing the start of job %s failed",
                           self.worker_id, job_id, exc_info=True)

    def report(self, trace_id: str, started: float, result: JobResult
               ) -> Awaitable[None] | None:
        """Count ``result``, publish it, then acknowledge the job: at once on a bus that
        takes it without awaiting (``ports.PublishNow``: None then), else in the awaitable
        returned (await it at once). A result that cannot be published is logged and not
        acknowledged: the bus hands the job to another worker once this one's connection
        is reset, or when it leaves. A bus whose only listener of results takes them bare
        (``report_now``) gets no packet: nobody would read more than ``result``.
        ``result``'s ``worker_id`` and ``execution_ms`` are set here. A worker's slot does
        the same for every job's result without this call (tests/worker/
        test_worker_results.py compares the two); this reports a cancelled job's."""
        result.worker_id = self.worker_id
        result.execution_ms = int((self.now() - started) * 1000)
        if result.status is _SUCCEEDED:
            self.succeeded += 1
        else:
            self.failed += 1
        report_now = self.report_now  # handed over and acknowledged in one call, with no
        if report_now is not None:    # packet (only set with the bus's own ``publish_now``)
            try:
                if report_now(result):
                    return None
            except Exception:
                self.not_published(result)
                return None
        return self.publish(trace_id, result)

    def publish(self, trace_id: str, result: JobResult) -> Awaitable[None] | None:
        """``report``'s publish of a stamped and counted ``result`` in a packet, then the
        acknowledgement: at once on a bus that takes it without awaiting (None then), else
        in the awaitable returned (await it at once)."""
        packet = BusPacket(trace_id, self.worker_id, datetime.now(UTC), PROTOCOL_VERSION,
                           result)
        publish_now = self._publish_now  # ``ports.PublishNow``: an in-process bus
        if publish_now is None:
            return self._publish(packet, result)
        try:
            if not publish_now(SUBJECT_RESULT, packet):
                return self._publish(packet, result)
        except Exception:
            self.not_published(result)
            return None
        ack = self.ack
        if ack is not None and self._ack_after_now:
            ack(result.job_id)
        return None

    async def _publish(self, packet: BusPacket, result: JobResult) -> None:
        """``report``'s awaited publish, then the acknowledgement."""
        try:
            await self._bus.publish(SUBJECT_RESULT, packet)
        except Exception:
            self.not_published(result)
            return
        if self.ack is not None:
            self.ack(result.job_id)

    def not_published(self, result: JobResult) -> None:
        """Log that ``result`` could not be handed over (its job is not acknowledged)."""
        logger.exception("worker %s: publishing the result of job %s failed",
                         self.worker_id, result.job_id)


__all__ = ["Reporter"]
