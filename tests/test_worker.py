"""Specification of the worker (API.md "Workers"): one test per promised behaviour.

Every test runs on Trio's autojump clock: handlers that "sleep for an hour" cost nothing, and
a result that never comes fails the test at ``fail_after`` instead of hanging it.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.errors import NotFoundError
from cordtrio.payloads import context_key, pointer_for_key, result_key
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    Budget,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
)
from cordtrio.worker import Job, JobDenied, default_queue, open_worker

TOPIC = "job.test.echo"
WAIT = 60  # virtual seconds; with the autojump clock a missing result fails fast


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(params=[False, True], ids=["objects", "wire"])
def bus(request: pytest.FixtureRequest) -> MemoryBus:
    """Both ways the memory bus delivers: the packet object itself, or a CBOR round trip."""
    return MemoryBus(codec=request.param)


@pytest.fixture
def payloads() -> MemoryPayloadStore:
    return MemoryPayloadStore()


def make_request(
    job_id: str = "run-1:step@1",
    *,
    topic: str = TOPIC,
    context_ptr: str = "",
    deadline_ms: int = 0,
    env: dict[str, str] | None = None,
) -> JobRequest:
    run_id, _, rest = job_id.rpartition(":")
    step_id = rest.partition("@")[0]
    return JobRequest(
        job_id=job_id,
        topic=topic,
        context_ptr=context_ptr,
        env={"run_id": run_id, "step_id": step_id, **(env or {})},
        budget=Budget(deadline_ms=deadline_ms) if deadline_ms else None,
    )


async def submit(bus: MemoryBus, request: JobRequest, trace_id: str = "trace-1") -> None:
    await bus.publish(SUBJECT_SUBMIT, BusPacket(trace_id=trace_id, payload=request))


async def submit_with_input(
    bus: MemoryBus, payloads: MemoryPayloadStore, job_id: str, data: dict[str, Any], **kw: Any
) -> None:
    key = context_key(job_id)
    await payloads.put_context(key, json.dumps(data).encode())
    await submit(bus, make_request(job_id, context_ptr=pointer_for_key(key), **kw))


@asynccontextmanager
async def results(bus: MemoryBus) -> AsyncIterator[trio.abc.ReceiveChannel[BusPacket]]:
    """Every packet published on ``sys.job.result`` while the block runs."""
    async with bus.subscribe(SUBJECT_RESULT) as channel:
        yield channel


async def next_result(channel: trio.abc.ReceiveChannel[BusPacket]) -> JobResult:
    with trio.fail_after(WAIT):
        packet = await channel.receive()
    assert isinstance(packet.payload, JobResult)
    return packet.payload


async def assert_no_more_results(channel: trio.abc.ReceiveChannel[BusPacket]) -> None:
    with trio.move_on_after(WAIT):
        packet = await channel.receive()
        pytest.fail(f"unexpected result {packet.payload!r}")


async def echo(job: Job) -> dict[str, Any]:
    return {"echo": job.input}


# ------------------------------------------------------------------------------- success


async def test_success_stores_json_result_and_publishes_succeeded_with_pointer(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: echo}, worker_id="w1"
    ) as worker:
        await submit_with_input(bus, payloads, "run-1:a@1", {"n": 3})
        with trio.fail_after(WAIT):
            packet = await channel.receive()

    result = packet.payload
    assert isinstance(result, JobResult)
    assert result.job_id == "run-1:a@1"
    assert result.status == JobStatus.SUCCEEDED
    assert result.result_ptr == "redis://res:run-1:a@1"
    assert result.worker_id == "w1"
    assert result.error_message == ""
    assert packet.trace_id == "trace-1"
    assert packet.sender_id == "w1"
    assert packet.protocol_version == 1
    assert packet.created_at is not None and packet.created_at.tzinfo is not None
    assert packet.created_at.utcoffset() == UTC.utcoffset(None)
    stored = await payloads.get_result(result_key("run-1:a@1"))
    assert json.loads(stored) == {"echo": {"n": 3}}
    assert (worker.handled, worker.succeeded, worker.failed, worker.running) == (1, 1, 0, 0)


async def test_handler_sees_input_item_and_job_ids(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    seen: list[Job] = []

    async def record(job: Job) -> None:
        seen.append(job)

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: record}):
        await submit_with_input(
            bus, payloads, "run:1:fan[2]@3", {"item": {"x": 1}, "k": "v"},
            env={"foreach_item": '{"x": 999}'},
        )
        first = await next_result(channel)
        # No payload pointer: input is {} and the item comes from env.foreach_item (JSON).
        await submit(bus, make_request("run:1:fan[4]@1", env={"foreach_item": '[1, "two"]'}))
        second = await next_result(channel)

    assert first.status == second.status == JobStatus.SUCCEEDED
    assert json.loads(await payloads.get_result(result_key("run:1:fan[2]@3"))) is None
    with_input, without_input = seen
    assert with_input.input == {"item": {"x": 1}, "k": "v"}
    assert with_input.item == {"x": 1}  # the payload's item wins over env
    assert with_input.job_id == "run:1:fan[2]@3"
    assert with_input.topic == TOPIC
    assert with_input.run_id == "run:1"
    assert with_input.step_id == "fan[2]"
    assert with_input.attempt == 3
    assert without_input.input == {}
    assert without_input.item == [1, "two"]
    assert without_input.attempt == 1


def test_job_properties_without_env_or_attempt_suffix() -> None:
    job = Job.from_request(JobRequest(job_id="plain", topic=TOPIC))
    assert (job.run_id, job.step_id, job.attempt, job.item, job.input) == ("", "", 1, None, {})
    assert Job.from_request(JobRequest(job_id="r:s@x")).attempt == 1
    raw = Job.from_request(JobRequest(env={"foreach_item": "not json"}))
    assert raw.item == "not json"


# ------------------------------------------------------------------------------ failures


async def test_exception_reports_failed_with_message_and_error_code(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async def boom(job: Job) -> None:
        if job.step_id == "loud":
            raise ValueError("disk on fire")
        raise KeyError  # no message: the class name stands in

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: boom}) as worker:
        await submit(bus, make_request("r:loud@1"))
        loud = await next_result(channel)
        await submit(bus, make_request("r:quiet@1"))
        quiet = await next_result(channel)

    assert (loud.status, loud.error_code, loud.error_message) == (
        JobStatus.FAILED, "ValueError", "disk on fire",
    )
    assert (quiet.status, quiet.error_code, quiet.error_message) == (
        JobStatus.FAILED, "KeyError", "KeyError",
    )
    assert loud.result_ptr == ""
    with pytest.raises(NotFoundError):
        await payloads.get_result(result_key("r:loud@1"))
    assert (worker.handled, worker.succeeded, worker.failed) == (2, 0, 2)


async def test_job_denied_reports_denied(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async def refuse(job: Job) -> None:
        raise JobDenied(f"tenant may not resize {job.job_id}")

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: refuse}):
        await submit(bus, make_request("r:s@1"))
        result = await next_result(channel)

    assert result.status == JobStatus.DENIED
    assert result.error_code == "JobDenied"
    assert result.error_message == "tenant may not resize r:s@1"


async def test_budget_deadline_reports_timeout(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    cancelled = False

    async def slow(job: Job) -> None:
        nonlocal cancelled
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            cancelled = True
            raise

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: slow}):
        start = trio.current_time()
        await submit(bus, make_request("r:s@1", deadline_ms=1500))
        result = await next_result(channel)
        elapsed = trio.current_time() - start

    assert result.status == JobStatus.TIMEOUT
    assert result.error_message == "deadline of 1500 ms exceeded"
    assert cancelled
    assert 1.5 <= elapsed < 2
    assert result.execution_ms == 1500


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


async def test_non_serializable_return_reports_failed(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async def opaque(job: Job) -> object:
        return {"handle": object()}

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: opaque}):
        await submit(bus, make_request("r:s@1"))
        result = await next_result(channel)

    assert result.status == JobStatus.FAILED
    assert result.error_code == "ResultNotSerializable"
    assert "r:s@1" in result.error_message
    with pytest.raises(NotFoundError):
        await payloads.get_result(result_key("r:s@1"))


async def test_missing_context_payload_reports_failed_naming_the_pointer(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    called = False

    async def never(job: Job) -> None:
        nonlocal called
        called = True

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: never}):
        await submit(bus, make_request("r:s@1", context_ptr="redis://ctx:r:s@1"))
        result = await next_result(channel)

    assert result.status == JobStatus.FAILED
    assert "r:s@1" in result.error_message
    assert "redis://ctx:r:s@1" in result.error_message
    assert not called


async def test_input_that_is_not_a_json_object_reports_failed(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    await payloads.put_context("ctx:bad", b"{not json")
    await payloads.put_context("ctx:list", b"[1, 2]")
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
        await submit(bus, make_request("r:bad@1", context_ptr="redis://ctx:bad"))
        bad = await next_result(channel)
        await submit(bus, make_request("r:list@1", context_ptr="redis://ctx:list"))
        listed = await next_result(channel)
        await submit(bus, make_request("r:ptr@1", context_ptr="s3://elsewhere"))
        foreign = await next_result(channel)

    for result, ptr in ((bad, "redis://ctx:bad"), (listed, "redis://ctx:list"),
                        (foreign, "s3://elsewhere")):
        assert result.status == JobStatus.FAILED
        assert ptr in result.error_message
        assert result.job_id in result.error_message


async def test_result_store_failure_reports_failed_and_worker_survives(
    bus: MemoryBus, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyPayloads(MemoryPayloadStore):
        fail_next = True

        async def put_result(self, key: str, data: bytes) -> None:
            if self.fail_next:
                self.fail_next = False
                raise OSError("connection reset")
            await super().put_result(key, data)

    payloads = FlakyPayloads()
    with caplog.at_level(logging.ERROR, logger="cordtrio.worker"):
        async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
            await submit(bus, make_request("r:a@1"))
            first = await next_result(channel)
            await submit(bus, make_request("r:b@1"))
            second = await next_result(channel)

    assert (first.status, first.error_code) == (JobStatus.FAILED, "OSError")
    assert "res:r:a@1" in first.error_message
    assert second.status == JobStatus.SUCCEEDED
    assert any("r:a@1" in record.getMessage() for record in caplog.records)


async def test_result_publish_failure_is_logged_and_worker_survives(
    payloads: MemoryPayloadStore,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FlakyBus(MemoryBus):
        async def publish(self, subject: str, packet: BusPacket) -> None:
            # Fail by job id, not "the first result": Trio schedules the two jobs in either
            # order.
            job_id = getattr(packet.payload, "job_id", "")
            if subject == SUBJECT_RESULT and job_id == "r:lost@1":
                raise OSError("socket closed")
            await super().publish(subject, packet)

    bus = FlakyBus()
    with caplog.at_level(logging.ERROR, logger="cordtrio.worker"):
        async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}) as w:
            await submit(bus, make_request("r:lost@1"))
            await submit(bus, make_request("r:kept@1"))
            kept = await next_result(channel)
            await assert_no_more_results(channel)

    assert kept.job_id == "r:kept@1"
    assert w.handled == 2
    assert any("r:lost@1" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------- scheduling


async def test_max_concurrency_caps_running_handlers(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    limit, jobs = 3, 10
    current = peak = 0

    async def busy(job: Job) -> None:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        try:
            await trio.sleep(1)
        finally:
            current -= 1

    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: busy}, max_concurrency=limit
    ):
        for i in range(jobs):
            await submit(bus, make_request(f"r:s[{i}]@1"))
        done = [await next_result(channel) for _ in range(jobs)]

    assert peak == limit
    assert sorted(r.job_id for r in done) == sorted(f"r:s[{i}]@1" for i in range(jobs))
    assert all(r.status == JobStatus.SUCCEEDED for r in done)


async def test_unknown_topic_is_ignored(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}) as worker:
        await submit(bus, make_request("r:other@1", topic="job.someone.else"))
        await submit(bus, make_request("r:mine@1"))
        assert (await next_result(channel)).job_id == "r:mine@1"
        await assert_no_more_results(channel)
    assert worker.handled == 1


async def test_same_topic_set_shares_jobs_and_other_topic_sets_see_every_job(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    jobs = 40
    handled_by: Counter[str] = Counter()

    async def work(job: Job) -> None:
        await trio.sleep(0.1)

    async with (
        results(bus) as channel,
        open_worker(bus, payloads, {TOPIC: work}, worker_id="a") as a,
        open_worker(bus, payloads, {TOPIC: work}, worker_id="b") as b,
        open_worker(bus, payloads, {TOPIC: work, "job.other": work}, worker_id="c") as c,
    ):
        assert a.queue == b.queue == default_queue({TOPIC: work}) == "cordtrio-worker:" + TOPIC
        assert c.queue == "cordtrio-worker:job.other," + TOPIC
        for i in range(jobs):
            await submit(bus, make_request(f"r:s[{i}]@1"))
        for _ in range(2 * jobs):
            result = await next_result(channel)
            handled_by[result.worker_id] += 1
        await assert_no_more_results(channel)

    assert handled_by["a"] + handled_by["b"] == jobs  # each job exactly once in the group
    assert handled_by["a"] > 0 and handled_by["b"] > 0
    assert handled_by["c"] == jobs  # another topic set: its own group, sees every job
    assert (a.handled, b.handled, c.handled) == (handled_by["a"], handled_by["b"], jobs)


async def test_leaving_the_block_cancels_running_handlers_without_results(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    started = trio.Event()
    cancelled: list[str] = []

    async def forever(job: Job) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(job.job_id)
            raise

    async with results(bus) as channel:
        async with open_worker(bus, payloads, {TOPIC: forever}) as worker:
            await submit(bus, make_request("r:s@1"))
            with trio.fail_after(WAIT):
                await started.wait()
        assert cancelled == ["r:s@1"]
        assert worker.handled == 0
        await assert_no_more_results(channel)
        # Unsubscribed: a job published now reaches nobody and nothing runs it.
        await submit(bus, make_request("r:t@1"))
        await assert_no_more_results(channel)
    assert cancelled == ["r:s@1"]


async def test_exception_in_the_body_propagates_unwrapped(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    with pytest.raises(RuntimeError, match="body failed"):
        async with open_worker(bus, payloads, {TOPIC: echo}):
            raise RuntimeError("body failed")


async def test_subscribe_failure_propagates_unwrapped(payloads: MemoryPayloadStore) -> None:
    class DeadBus(MemoryBus):
        def subscribe(self, subject: str, queue: str = "") -> Any:
            raise OSError("bus unreachable")

    with pytest.raises(OSError, match="bus unreachable"):
        async with open_worker(DeadBus(), payloads, {TOPIC: echo}):
            pytest.fail("the body must not run without subscriptions")


async def test_outer_cancellation_propagates_through_the_block(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    after_block = False
    with trio.CancelScope() as scope:
        async with open_worker(bus, payloads, {TOPIC: echo}):
            scope.cancel()
            await trio.sleep(1)
        after_block = True
    assert scope.cancelled_caught
    assert not after_block


async def test_bad_arguments_are_rejected(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        async with open_worker(bus, payloads, {TOPIC: echo}, max_concurrency=0):
            pass
    with pytest.raises(ValueError, match="handler"):
        async with open_worker(bus, payloads, {}):
            pass
