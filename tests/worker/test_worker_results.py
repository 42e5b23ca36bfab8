"""The worker's results (API.md "Workers"): success, failures and bad input.

One test per promised behaviour, on Trio's autojump clock: handlers that "sleep for an
hour" cost nothing, and a result that never comes fails at ``fail_after``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pytest
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
    submit_with_input,
)

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.payloads import result_key
from cordtrio.protocol import (
    SUBJECT_RESULT,
    BusPacket,
    JobRequest,
    JobResult,
    JobStatus,
)
from cordtrio.worker import Job, JobDenied, open_worker

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
    # the slot sets a success's fields one by one: every one as ``__init__`` sets it
    assert result == JobResult("run-1:a@1", JobStatus.SUCCEEDED, "redis://res:run-1:a@1",
                               "w1", result.execution_ms)
    assert result.artifact_ptrs == []
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
    # the slot sets a job's fields one by one: every one as ``__init__`` sets it
    for job in seen:
        assert job.__class__ is Job
        assert job == Job(job.request, job.input, job.item)
        assert vars(job) == vars(Job.from_request(job.request, job.input))


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


async def test_execution_ms_is_the_handlers_time_on_trios_own_clock(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    """Under Trio's ``SystemClock`` the worker times jobs with ``perf_counter`` itself (the
    clock's offset cancels out of a duration): the same milliseconds the clock would give."""
    async def sleeps(job: Job) -> dict[str, int]:
        await trio.sleep(0.05)
        return {"ok": 1}

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: sleeps}):
        start = trio.current_time()
        await submit(bus, make_request("r:s@1"))
        result = await next_result(channel)
        elapsed_ms = (trio.current_time() - start) * 1000

    assert result.status == JobStatus.SUCCEEDED
    assert 50 <= result.execution_ms <= elapsed_ms


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

    for result, ptr, code in ((bad, "redis://ctx:bad", "InvalidInput"),
                              (listed, "redis://ctx:list", "InvalidInput"),
                              (foreign, "s3://elsewhere", "PayloadPointerError")):
        assert result.status == JobStatus.FAILED
        assert ptr in result.error_message
        assert result.job_id in result.error_message
        assert result.error_code == code  # "not JSON" and "key refused" kept apart


async def test_a_refused_result_key_is_the_stores_error_not_the_outputs(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    """The output is stored in one call on an in-process store: a key the store refuses
    still fails as the store's error, an output JSON cannot hold as the output's."""
    async def opaque(job: Job) -> object:
        return {"handle": object()}

    async with results(bus) as channel, \
            open_worker(bus, payloads, {TOPIC: echo, "other": opaque}):
        await submit(bus, make_request("r:s@1 "))  # ``res:r:s@1 ``: refused
        refused = await next_result(channel)
        await submit(bus, make_request("r:t@1 ", topic="other"))
        opaque_result = await next_result(channel)

    assert (refused.status, refused.error_code) == (JobStatus.FAILED, "PayloadPointerError")
    assert (opaque_result.status, opaque_result.error_code) == (
        JobStatus.FAILED, "ResultNotSerializable")


async def test_a_result_store_outage_is_waited_out(
    bus: MemoryBus, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyPayloads(MemoryPayloadStore):
        failures = 3

        async def put_result(self, key: str, data: bytes) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("connection reset")
            await super().put_result(key, data)

    payloads = FlakyPayloads()
    with caplog.at_level(logging.WARNING):
        async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
            await submit(bus, make_request("r:a@1"))
            first = await next_result(channel)
    assert first.status == JobStatus.SUCCEEDED  # not a failure: the store came back
    assert payloads.failures == 0
    assert any("res:r:a@1" in record.getMessage() for record in caplog.records)


async def test_a_one_call_result_write_that_fails_is_waited_out(
    bus: MemoryBus, autojump_clock: MockClock
) -> None:
    """An in-process store's one-call write (encoded and stored) failing with backend
    trouble is not the job's failure: the write is waited out as an awaited one is."""
    class OnceDown(MemoryPayloadStore):
        down = True

        def put_result_value_now(self, key: str, value: object) -> None:
            if self.down:
                self.down = False
                raise OSError("store restarting")
            MemoryPayloadStore.put_result_value_now(self, key, value)

    OnceDown.calls_now = True  # its one-call write still used, like the class it derives from
    payloads = OnceDown()
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
        await submit(bus, make_request("r:a@1"))
        result = await next_result(channel)
    assert result.status == JobStatus.SUCCEEDED
    assert not payloads.down
    assert json.loads(await payloads.get_result(result_key("r:a@1"))) == {"echo": {}}


async def test_a_definite_result_store_error_reports_failed_and_worker_survives(
    bus: MemoryBus, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class RefusingPayloads(MemoryPayloadStore):
        refuse_next = True

        async def put_result(self, key: str, data: bytes) -> None:
            if self.refuse_next:
                self.refuse_next = False
                raise ValidationError(f"payload {key}: too large")
            await super().put_result(key, data)

    payloads = RefusingPayloads()
    with caplog.at_level(logging.ERROR, logger="cordtrio.worker"):
        async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}):
            await submit(bus, make_request("r:a@1"))
            first = await next_result(channel)
            await submit(bus, make_request("r:b@1"))
            second = await next_result(channel)

    assert (first.status, first.error_code) == (JobStatus.FAILED, "ValidationError")
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

    await _one_result_lost(FlakyBus(), payloads, caplog)


async def test_a_result_the_bus_fails_to_take_at_once_is_logged_and_not_acknowledged(
    payloads: MemoryPayloadStore,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``publish_now`` (an in-process bus's call, not awaited) raising is a failed publish,
    as an awaited ``publish`` raising is: logged, and the job is left with the bus."""

    class FailingNowBus(MemoryBus):
        def publish_now(self, subject: str, packet: BusPacket) -> bool:
            if subject == SUBJECT_RESULT and packet.payload.job_id == "r:lost@1":  # type: ignore[union-attr]
                raise OSError("socket closed")
            return super().publish_now(subject, packet)

    FailingNowBus.publishes_now = True  # taken at once, like the class it derives from
    bus = FailingNowBus()
    await _one_result_lost(bus, payloads, caplog, lambda: bus.jobs.owns("r:lost@1")
                           and not bus.jobs.owns("r:kept@1"))


async def _one_result_lost(bus: MemoryBus, payloads: MemoryPayloadStore,
                           caplog: pytest.LogCaptureFixture,
                           held: Callable[[], bool] | None = None) -> None:
    """Two jobs, the result of ``r:lost@1`` failing to publish: the other's comes, the
    failure is logged, both were handled; ``held`` (the bus's ownership of the jobs) is
    checked while the worker is open."""
    with caplog.at_level(logging.ERROR, logger="cordtrio.worker"):
        async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}) as w:
            await submit(bus, make_request("r:lost@1"))
            await submit(bus, make_request("r:kept@1"))
            kept = await next_result(channel)
            await assert_no_more_results(channel)
            if held is not None:
                assert held()

    assert kept.job_id == "r:kept@1"
    assert w.handled == 2
    assert any("r:lost@1" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------ both ways of reporting


async def _reported(bus: MemoryBus, payloads: MemoryPayloadStore, bare: bool
                    ) -> tuple[list[Any], tuple[int, int, int]]:
    """What an engine-like listener of results is handed for three jobs (one succeeds,
    one fails, one is denied), and the worker's counters: taken ``bare`` (the listener's
    ``on_payload``: the slot's own report, no packet) or as packets (``Reporter``'s)."""
    got: list[Any] = []

    async def work(job: Job) -> dict[str, Any]:
        if job.input.get("fail"):
            raise RuntimeError("boom")
        if job.input.get("deny"):
            raise JobDenied("no")
        return {"ok": True}

    def take(packet: BusPacket) -> None:
        got.append(("packet", packet.trace_id, packet.payload))

    def take_bare(result: Any) -> None:
        got.append(("bare", result))

    async with bus.listen(SUBJECT_RESULT, "engines", take,
                          on_payload=take_bare if bare else None), \
            open_worker(bus, payloads, {TOPIC: work}, worker_id="w1") as worker:
        for n, data in enumerate([{}, {"fail": True}, {"deny": True}]):
            await submit_with_input(bus, payloads, f"run-1:s{n}@1", data)
        with trio.fail_after(WAIT):
            while len(got) < 3:
                await trio.sleep(0.01)
        counters = (worker.handled, worker.succeeded, worker.failed)
        assert bus.jobs.held == 0  # every job acknowledged
    # in the jobs' order (a result reported by its write's reply may come after a later
    # job's failure)
    got.sort(key=lambda entry: entry[-1].job_id)
    return got, counters


async def test_a_result_handed_over_bare_is_the_one_published_in_a_packet(
    payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    """The slot stamps, counts and hands a result to the bus's one listener itself
    (``Reporter.report`` without its frame): the same results and counters as
    ``Reporter.report``'s packets."""
    bare, bare_counters = await _reported(MemoryBus(), payloads, True)
    packed, packed_counters = await _reported(MemoryBus(), payloads, False)
    assert [kind for kind, *_ in bare] == ["bare"] * 3
    assert [kind for kind, *_ in packed] == ["packet"] * 3
    assert [trace for _, trace, _ in packed] == ["trace-1"] * 3
    assert [r for _, r in bare] == [r for _, _, r in packed]
    assert [r.worker_id for _, r in bare] == ["w1"] * 3
    assert [r.status for _, r in bare] == [JobStatus.SUCCEEDED, JobStatus.FAILED,
                                           JobStatus.DENIED]
    assert bare_counters == packed_counters == (3, 1, 2)


async def test_the_slot_reports_what_reporter_report_reports(
    payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    """The slot's own report of every job against ``Reporter.report`` (which reports a
    cancelled job's result) called for the same results: the same result handed to the
    listener, the same counters, every job acknowledged."""
    from cordtrio.worker_report import Reporter

    slot_got, slot_counters = await _reported(MemoryBus(), payloads, True)
    bus = MemoryBus()
    got: list[Any] = []
    async with bus.listen(SUBJECT_RESULT, "engines", lambda packet: got.append(packet),
                          on_payload=got.append), \
            bus.consume_jobs([TOPIC], capacity=8) as inbox:
        reporter = Reporter(bus, "w1")
        reporter.take_inbox(inbox)
        assert reporter.report_now is not None  # the bare way, as the slot's
        for _, result in slot_got:
            await submit_with_input(bus, payloads, result.job_id, {})
            packet = await inbox.receive()
            assert packet.payload.job_id == result.job_id
            unstamped = JobResult(result.job_id, result.status, result.result_ptr,
                                  error_code=result.error_code,
                                  error_message=result.error_message)
            assert reporter.report(packet.trace_id, trio.current_time(), unstamped) is None
        assert bus.jobs.held == 0  # every job acknowledged
    assert got == [result for _, result in slot_got]
    assert (reporter.succeeded, reporter.failed) == slot_counters[1:]
