"""Cancelling jobs on a worker (API.md "Workers").

One test per promised behaviour, on Trio's autojump clock: handlers that "sleep for an
hour" cost nothing, and a result that never comes fails at ``fail_after``.
"""

from __future__ import annotations

import contextvars
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
    BusPacket,
    JobCancel,
    JobStatus,
)
from cordtrio.worker import Job, open_worker


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
