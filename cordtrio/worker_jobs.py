"""A worker's job execution beyond its common way: a slot (``worker.py``) loads a job's
input, runs its handler and stores its output itself when nothing goes wrong (no frame of
its own on every job), and comes here for everything else: an input or a result the store
must be waited for (SPEC §13), a deadline, and every failure, each made the ``JobResult``
that says why (raised as ``JobFailed``, caught once by the slot). ``worker_report.py``
hands the result over."""

from __future__ import annotations

import logging
from typing import Any

import trio

from . import json_payloads
from .job import Handler, Job, JobDenied
from .payloads import key_from_pointer
from .ports import PayloadStore
from .protocol import JobRequest, JobResult, JobStatus
from .retry import retry_after

logger = logging.getLogger("cordtrio.worker")


class JobFailed(Exception):
    """A job ended without its output stored: ``result`` says how (failed, denied,
    timeout)."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.error_message)
        self.result = result


class JobRunner:
    """What a worker's slots do with a job besides the common way, against the worker's
    payload store (see the module docstring)."""

    def __init__(self, payloads: PayloadStore, worker_id: str) -> None:
        self.worker_id = worker_id
        self._path = path = json_payloads.path_for(payloads)  # how this store takes payloads
        # what a slot calls on every job, taken from the path once: an in-process store's
        # reads and write without an await (``input_now``: None unless the input is a
        # snapshot; ``read_input_now``, ``store_result_now``: None for a store out of
        # process), else the store's awaited read and write of the encoded output
        self.input_now = path.input_at_now
        self.read_input_now = path.context_at_now
        self.store_result_now = path.store_result_now
        self.get_context = path.get_context
        self.context_at = path.context_at  # a bytes store's read by pointer, else None
        self.encode = path.encode
        self.put_result = path.put_result
        # a store out of process whose writes may report through a callback (None: await)
        self.put_result_then = path.result_put_then

    async def load_input(self, request: JobRequest, error: Exception
                         ) -> json_payloads.JsonPayload:
        """The input at ``request.context_ptr`` after ``error`` from the slot's own read
        (the store's, or a bad pointer): a store that cannot be reached is waited out
        (``retry_after``); ``JobFailed`` if the input cannot be had."""
        ptr = request.context_ptr
        try:
            key = key_from_pointer(ptr)
            return await retry_after(
                error, lambda: self._path.get_context(key),
                f"worker {self.worker_id}: load input {ptr}")
        except Exception as exc:
            raise JobFailed(failure(
                JobStatus.FAILED, type(exc).__name__,
                f"job {request.job_id}: cannot load input from {ptr}: {exc}",
                request.job_id)) from None

    async def run_with_deadline(self, handler: Handler, job: Job, deadline_ms: int) -> Any:
        """The handler's output, run under ``deadline_ms``; ``JobFailed`` when it raised or
        ran past the deadline."""
        error: Exception | None = None
        output: Any = None
        with trio.move_on_after(deadline_ms / 1000) as deadline:
            try:
                output = await handler(job)
            except Exception as exc:
                error = exc
        if deadline.cancel_called:  # even if the handler swallowed the Cancelled
            raise JobFailed(failure(
                JobStatus.TIMEOUT, "DeadlineExceeded",
                f"deadline of {deadline_ms} ms exceeded", job.request.job_id))
        if error is not None:
            raise JobFailed(self.handler_failed(job.request, error))
        return output

    async def store_output(self, key: str, output: Any, job_id: str, error: Exception
                           ) -> None:
        """Store the handler's ``output`` at ``key`` after ``error`` from the slot's own
        attempt (its encoding or its write): ``JobFailed`` if JSON cannot hold ``output``,
        else the write's error is waited out (``store_result``)."""
        try:
            body = self.encode(output, False)  # not compact
        except (TypeError, ValueError) as exc:
            raise not_serializable(job_id, exc) from None
        await self.store_result(key, body, job_id, error)

    async def store_result(self, key: str, body: Any, job_id: str, error: Exception
                           ) -> None:
        """Store the output ``body`` at ``key`` after ``error`` from the first write: a
        store that cannot be reached is waited out (``retry_after``, SPEC §13);
        ``JobFailed`` on a definite error."""
        try:
            await retry_after(
                error, lambda: self._path.put_result(key, body),
                f"worker {self.worker_id}: store result {key}")
        except Exception as exc:
            logger.exception("worker %s: storing the result of job %s at %s failed",
                             self.worker_id, job_id, key)
            raise JobFailed(failure(
                JobStatus.FAILED, type(exc).__name__,
                f"job {job_id}: storing the result at {key} failed: {exc}", job_id,
            )) from None

    def handler_failed(self, request: JobRequest, error: Exception) -> JobResult:
        """The result of a handler that raised ``error``: denied (``JobDenied``) or failed."""
        status = JobStatus.DENIED if isinstance(error, JobDenied) else JobStatus.FAILED
        if status == JobStatus.FAILED:  # with its traceback, for the operator
            logger.info("worker %s: job %s (topic %s) failed: %s: %s",
                        self.worker_id, request.job_id, request.topic,
                        type(error).__name__, error, exc_info=error)
        return failure(status, type(error).__name__, str(error) or type(error).__name__,
                       request.job_id)


def invalid_input(request: JobRequest, problem: str) -> JobFailed:
    """The failure of a job whose input is not a JSON object (``problem`` says how)."""
    return JobFailed(failure(JobStatus.FAILED, "InvalidInput",
                             f"job {request.job_id}: input at {request.context_ptr} "
                             f"{problem}", request.job_id))


def not_serializable(job_id: str, error: Exception) -> JobFailed:
    """The failure of a job whose handler returned what JSON cannot hold."""
    return JobFailed(failure(
        JobStatus.FAILED, "ResultNotSerializable",
        f"job {job_id}: handler returned a value that is not JSON-serializable: {error}",
        job_id))


def failure(status: JobStatus, code: str, message: str, job_id: str) -> JobResult:
    """A job's result that is not a success: ``code`` and ``message`` say why."""
    return JobResult(job_id, status, error_code=code, error_message=message)


__all__ = ["JobFailed", "JobRunner", "failure", "invalid_input", "not_serializable"]
