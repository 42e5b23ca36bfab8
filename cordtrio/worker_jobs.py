"""A worker's job execution: load a job's input, run its handler (under the job's deadline),
store its output; every outcome becomes a ``JobResult`` (see ``worker.py`` for the worker
around it: its slots, and ``worker_report.py`` for how the result is handed over)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from . import json_payloads
from .job import Handler, Job, JobDenied, item_of
from .payloads import POINTER_SCHEME, RESULT_PREFIX, key_from_pointer
from .ports import PayloadStore
from .protocol import JobRequest, JobResult, JobStatus
from .retry import retry_after

logger = logging.getLogger("cordtrio.worker")

_SUCCEEDED = JobStatus.SUCCEEDED  # a module global: reading the enum member costs a call


class JobRunner:
    """Runs the jobs of one worker against its payload store."""

    def __init__(self, payloads: PayloadStore, worker_id: str) -> None:
        self.worker_id = worker_id
        self._path = path = json_payloads.path_for(payloads)  # how this store takes payloads
        # the three calls every job makes, taken from the path once (None: await the path's)
        self._encode = path.encode
        self._read_input_now = path.context_at_now
        self._put_result_now = path.put_result_now

    async def execute(self, request: JobRequest, handler: Handler,
                      deadline_ms: int) -> JobResult:
        """Load the input, run the handler (under ``deadline_ms``, the request's budget, when
        it is positive), store its output; every outcome is a result."""
        job_id = request.job_id
        ptr = request.context_ptr
        data: Any
        if ptr:
            try:
                read_now = self._read_input_now  # an in-process store: no await
                try:
                    if read_now is not None:
                        raw = read_now(ptr)
                    else:
                        raw = await self._path.get_context(key_from_pointer(ptr))
                except Exception as exc:
                    key = key_from_pointer(ptr)
                    raw = await retry_after(
                        exc, lambda: self._path.get_context(key),
                        f"worker {self.worker_id}: load input {ptr}")
            except Exception as exc:
                return failure(
                    JobStatus.FAILED, type(exc).__name__,
                    f"job {job_id}: cannot load input from {ptr}: {exc}", job_id,
                )
            try:
                data = raw.value()
            except ValueError as exc:
                return failure(
                    JobStatus.FAILED, "InvalidInput",
                    f"job {job_id}: input at {ptr} is not valid JSON: {exc}", job_id,
                )
            if not isinstance(data, dict):
                return failure(
                    JobStatus.FAILED, "InvalidInput",
                    f"job {job_id}: input at {ptr} is not a JSON object "
                    f"(got {type(data).__name__})", job_id,
                )
        else:
            data = {}
        # ``item_of`` only when there is an item to find (most jobs have none)
        item = item_of(request, data) if "item" in data or "foreach_item" in request.env \
            else None
        job = Job(request, data, item)

        output: Any
        if deadline_ms > 0:
            error: Exception | None = None
            with trio.move_on_after(deadline_ms / 1000) as deadline:
                try:
                    output = await handler(job)
                except Exception as exc:
                    error = exc
            if deadline.cancel_called:  # even if the handler swallowed the Cancelled
                return failure(
                    JobStatus.TIMEOUT, "DeadlineExceeded",
                    f"deadline of {deadline_ms} ms exceeded", job_id,
                )
            if error is not None:
                return self._handler_failed(request, error)
        else:
            try:
                output = await handler(job)
            except Exception as exc:
                return self._handler_failed(request, exc)

        try:
            body = self._encode(output, False)  # not compact
        except (TypeError, ValueError) as exc:
            return failure(
                JobStatus.FAILED, "ResultNotSerializable",
                f"job {job_id}: handler returned a value that is not JSON-serializable: {exc}",
                job_id,
            )
        key = RESULT_PREFIX + job_id  # ``result_key``, without the call
        try:
            # an unreachable store is waited out (SPEC §13); only a definite error fails
            try:
                put_now = self._put_result_now
                if put_now is not None:
                    put_now(key, body)  # an in-process store: nothing to await
                else:
                    await self._path.put_result(key, body)
            except Exception as exc:
                await retry_after(
                    exc, lambda: self._path.put_result(key, body),
                    f"worker {self.worker_id}: store result {key}")
        except Exception as exc:
            logger.exception("worker %s: storing the result of job %s at %s failed",
                             self.worker_id, job_id, key)
            return failure(
                JobStatus.FAILED, type(exc).__name__,
                f"job {job_id}: storing the result at {key} failed: {exc}", job_id,
            )
        # by position (``result_ptr``): keyword arguments to a class cost more
        return JobResult(job_id, _SUCCEEDED, POINTER_SCHEME + key)  # ``pointer_for_key``

    def _handler_failed(self, request: JobRequest, error: Exception) -> JobResult:
        """The result of a handler that raised ``error``: denied (``JobDenied``) or failed."""
        status = JobStatus.DENIED if isinstance(error, JobDenied) else JobStatus.FAILED
        if status == JobStatus.FAILED:  # with its traceback, for the operator
            logger.info("worker %s: job %s (topic %s) failed: %s: %s",
                        self.worker_id, request.job_id, request.topic,
                        type(error).__name__, error, exc_info=error)
        return failure(status, type(error).__name__, str(error) or type(error).__name__,
                       request.job_id)


def failure(status: JobStatus, code: str, message: str, job_id: str) -> JobResult:
    """A job's result that is not a success: ``code`` and ``message`` say why."""
    return JobResult(job_id, status, error_code=code, error_message=message)


__all__ = ["JobRunner", "failure"]
