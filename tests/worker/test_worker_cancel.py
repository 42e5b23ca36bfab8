"""Cancelling jobs on a worker (API.md "Workers").

One test per promised behaviour, on Trio's autojump clock: handlers that "sleep for an
hour" cost nothing, and a result that never comes fails at ``fail_after``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import trio
from trio.testing import MockClock
from worker_kit import (
    TOPIC,
    WAIT,
    assert_no_more_results,
    echo,
    make_request,
    next_result,
    results,
    submit,
)

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobResult,
    JobStatus,
)
from cordtrio.worker import _UNCHECKED_JOBS, Job, Worker, open_worker


async def test_job_cancel_cancels_the_handler_and_reports_cancelled(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    started = trio.Event()
    observed: list[str] = []

    async def forever(job: Job) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            observed.append(job.job_id)
            raise

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: forever}) as worker:
        await submit(bus, make_request("r:s@1"))
        with trio.fail_after(WAIT):
            await started.wait()
        assert worker.running == 1
        await bus.publish(SUBJECT_CANCEL, BusPacket(payload=JobCancel("r:s@1", "user asked")))
        result = await next_result(channel)

    assert result.status == JobStatus.CANCELLED
    assert result.error_message == "cancelled: user asked"
    assert observed == ["r:s@1"]
    assert (worker.running, worker.failed) == (0, 1)


async def test_every_worker_of_a_queue_group_hears_every_cancel(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    jobs = 8
    held: dict[str, list[str]] = {"a": [], "b": []}

    def holder(name: str) -> Any:
        async def forever(job: Job) -> None:
            held[name].append(job.job_id)
            await trio.sleep_forever()

        return forever

    async with (
        results(bus) as channel,
        open_worker(bus, payloads, {TOPIC: holder("a")}, worker_id="a") as a,
        open_worker(bus, payloads, {TOPIC: holder("b")}, worker_id="b") as b,
    ):
        for i in range(jobs):
            await submit(bus, make_request(f"r:s[{i}]@1"))
        with trio.fail_after(WAIT):
            while a.running + b.running < jobs:
                await trio.sleep(0.01)
        assert held["a"] and len(held["b"]) >= 2
        # Cancel only b's jobs: each cancel must reach b, whatever a does with it.
        for job_id in held["b"]:
            await bus.publish(SUBJECT_CANCEL, BusPacket(payload=JobCancel(job_id, "stop")))
        done = [await next_result(channel) for _ in held["b"]]
        assert (a.running, b.running) == (len(held["a"]), 0)

    assert sorted(r.job_id for r in done) == sorted(held["b"])
    assert {(r.status, r.worker_id) for r in done} == {(JobStatus.CANCELLED, "b")}


async def test_a_slot_runs_the_next_job_after_a_cancelled_one(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    started = trio.Event()

    async def first_forever(job: Job) -> dict[str, Any]:
        if job.job_id == "r:s@1":
            started.set()
            await trio.sleep_forever()
        return {"ok": job.job_id}

    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: first_forever}, max_concurrency=1
    ) as worker:
        await submit(bus, make_request("r:s@1"))
        with trio.fail_after(WAIT):
            await started.wait()
        await bus.publish(SUBJECT_CANCEL, BusPacket(payload=JobCancel("r:s@1", "stop")))
        assert (await next_result(channel)).status == JobStatus.CANCELLED
        await submit(bus, make_request("r:s@2"))
        second = await next_result(channel)

    assert (second.job_id, second.status) == ("r:s@2", JobStatus.SUCCEEDED)
    assert (worker.handled, worker.succeeded, worker.failed) == (2, 1, 1)


_JOB_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("job_var", default="unset")


async def test_context_variables_set_by_a_handler_do_not_reach_the_next_job(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    seen: list[str] = []

    async def binds(job: Job) -> None:
        seen.append(_JOB_VAR.get())
        _JOB_VAR.set(job.job_id)  # like structlog.bind_contextvars in a handler
        await trio.sleep(0)
        seen.append(_JOB_VAR.get())

    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: binds}, max_concurrency=1  # one slot runs both jobs
    ):
        for n in (1, 2):
            await submit(bus, make_request(f"r:s@{n}"))
            assert (await next_result(channel)).status == JobStatus.SUCCEEDED

    assert seen == ["unset", "r:s@1", "unset", "r:s@2"]


async def test_cancel_for_unknown_or_finished_job_is_ignored(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
        await submit(bus, make_request("r:s@1"))
        assert (await next_result(channel)).status == JobStatus.SUCCEEDED
        await bus.publish(SUBJECT_CANCEL, BusPacket(payload=JobCancel("r:s@1", "late")))
        await bus.publish(SUBJECT_CANCEL, BusPacket(payload=JobCancel("nobody:x@1", "?")))
        await assert_no_more_results(channel)
        # ... and the worker still serves.
        await submit(bus, make_request("r:t@1"))
        assert (await next_result(channel)).status == JobStatus.SUCCEEDED



_BURST = 1000
OnJob = Callable[[Job, int, trio.CancelScope, Worker], None]


async def _endless_burst(on_job: OnJob) -> tuple[list[str], list[JobResult]]:
    """A worker of one slot whose no-op handler publishes the next job every time (at once,
    ``publish_now``: no checkpoint) and calls ``on_job(job, jobs_run, outer, worker)``
    (``outer``: a scope around the worker); results reach a ``listen`` callback (no
    checkpoint either), so nothing but the slot's own cancellation checks can stop it. The
    handler stops publishing after ``_BURST`` jobs: a slot that never checked would end
    there (and the test fail) rather than hang. The jobs run and the results reported."""
    bus, store = MemoryBus(), MemoryPayloadStore()
    ran: list[str] = []
    reported: list[JobResult] = []
    outer = trio.CancelScope()

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.job_id)
        if len(ran) < _BURST:
            assert bus.publish_now(SUBJECT_SUBMIT, BusPacket(
                payload=make_request(f"r:s@{len(ran) + 1}")))
        on_job(job, len(ran), outer, worker)
        return {}

    def on_result(packet: BusPacket) -> None:
        assert isinstance(packet.payload, JobResult)
        reported.append(packet.payload)

    async with bus.listen(SUBJECT_RESULT, "engine", on_result):
        with outer:
            async with open_worker(bus, store, {TOPIC: handler}, max_concurrency=1) as worker:
                await submit(bus, make_request("r:s@1"))
                with trio.fail_after(WAIT):
                    while len(ran) < _BURST:
                        await trio.sleep(1)
    return ran, reported


async def test_a_slot_in_an_endless_burst_of_ready_jobs_stops_soon_once_shut_down(
    autojump_clock: MockClock,
) -> None:
    """A slot takes buffered jobs without a schedule point, and checks for cancellation
    only before one in so many of them: shut down in the middle of an endless burst of jobs
    that never wait, it still stops within that many jobs."""

    def shut_down_at_100(job: Job, jobs_run: int, outer: trio.CancelScope,
                         worker: Worker) -> None:
        if jobs_run == 100:
            outer.cancel()

    ran, reported = await _endless_burst(shut_down_at_100)
    assert 100 <= len(ran) <= 100 + _UNCHECKED_JOBS + 1 < _BURST
    assert [r.status for r in reported] == [JobStatus.SUCCEEDED] * len(reported)
    assert len(ran) - 1 <= len(reported) <= len(ran)


async def test_cancel_job_in_an_endless_burst_of_ready_jobs_cancels_that_job_at_once(
    autojump_clock: MockClock,
) -> None:
    """``cancel_job`` of the job a slot runs in a burst of jobs that never wait: that job
    is reported cancelled, and the slot goes on with the next ones."""

    def cancel_job_100(job: Job, jobs_run: int, outer: trio.CancelScope,
                       worker: Worker) -> None:
        if jobs_run == 100:
            assert worker.cancel_job(job.job_id, "enough")

    ran, reported = await _endless_burst(cancel_job_100)
    assert len(ran) == len(reported) == _BURST
    assert [r.job_id for r in reported if r.status != JobStatus.SUCCEEDED] == ["r:s@100"]
    assert reported[99].status == JobStatus.CANCELLED
    assert reported[99].error_message == "cancelled: enough"
