"""A worker's result written by the payload store's callback (``put_result_then``): the slot
moves on, the write's reply reports the result; a failed write is written again, a job
cancelled or taken back meanwhile is reported as such, and a stopping worker waits for the
results being written. On Trio's autojump clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from worker_kit import (
    TOPIC,
    ThenPayloads,
    assert_no_more_results,
    echo,
    make_request,
    next_result,
    results,
    submit,
)

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.errors import ValidationError
from cordtrio.payloads import result_key
from cordtrio.protocol import (
    SUBJECT_RESULT,
    BusPacket,
    JobStatus,
)
from cordtrio.worker import Job, open_worker, serve_worker


async def test_a_result_write_reported_by_its_reply_that_fails_is_written_again(
    bus: MemoryBus, autojump_clock: MockClock
) -> None:
    """A result write whose outcome goes to a callback (``put_result_then``) and fails is
    written again, awaited: backend trouble is waited out (the job succeeds), a definite
    error is the job's failure; the worker goes on either way."""
    class FlakyThen(ThenPayloads):
        outcomes = {"res:r:a@1": [OSError("connection reset"), OSError("connection reset")],
                    "res:r:b@1": [ValidationError("payload res:r:b@1: too large")] * 3}

        async def put_result(self, key: str, data: bytes) -> None:
            if self.outcomes.get(key):
                raise self.outcomes[key].pop(0)
            await super().put_result(key, data)

    FlakyThen.writes_results_then = True  # its callback writes still used
    payloads = FlakyThen()
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}) as worker:
        await submit(bus, make_request("r:a@1"))
        first = await next_result(channel)
        await submit(bus, make_request("r:b@1"))
        second = await next_result(channel)
        await submit(bus, make_request("r:c@1"))
        third = await next_result(channel)
    assert first.status == JobStatus.SUCCEEDED  # the first write's reply, then twice down
    assert json.loads(await payloads.get_result(result_key("r:a@1"))) == {"echo": {}}
    assert (second.status, second.error_code) == (JobStatus.FAILED, "ValidationError")
    assert third.status == JobStatus.SUCCEEDED
    assert (worker.handled, worker.succeeded, worker.failed) == (3, 2, 1)


async def test_a_result_written_after_the_worker_left_is_not_reported(
    autojump_clock: MockClock
) -> None:
    """A result whose write's reply comes once the worker has left is not reported: its
    job was never acknowledged, so the bus hands it to another worker."""
    class SlowThen(ThenPayloads):
        async def _write_then(self, key: str, data: bytes, done: Callable[[Any], None]
                              ) -> None:
            await trio.sleep(10)
            await super()._write_then(key, data, done)

    bus = MemoryBus()
    payloads = SlowThen()
    async with results(bus) as channel:
        async with open_worker(bus, payloads, {TOPIC: echo}) as worker:
            await submit(bus, make_request("r:a@1"))
            await trio.sleep(1)  # run, its result being written
        await trio.sleep(20)  # written now, the worker gone
        await assert_no_more_results(channel)
        assert bus.jobs.owns("r:a@1")  # not acknowledged: still the bus's
    assert worker.handled == 0
    async with results(bus) as channel, open_worker(bus, MemoryPayloadStore(),
                                                    {TOPIC: echo}):
        again = await next_result(channel)  # another worker runs it
    assert (again.job_id, again.status) == ("r:a@1", JobStatus.SUCCEEDED)


class _SlowThen(ThenPayloads):
    """Result writes answered 10 s after they are queued."""

    async def _write_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> None:
        await trio.sleep(10)
        await super()._write_then(key, data, done)


class _EndingBus(MemoryBus):
    """A memory bus whose worker's job inbox a test can end (``EndOfChannel``), as a
    bus that closes ends it."""

    inbox: Any = None

    @asynccontextmanager
    async def consume_jobs(self, topics: Collection[str], *, capacity: int
                           ) -> AsyncIterator[Any]:
        async with super().consume_jobs(topics, capacity=capacity) as inbox:
            self.inbox = inbox
            yield inbox


class _EndingSlowBus(_EndingBus):
    """The same, each result published a second after it is handed over (awaited)."""

    async def publish(self, subject: str, packet: BusPacket) -> None:
        if subject == SUBJECT_RESULT:
            await trio.sleep(1)
        await super().publish(subject, packet)


@pytest.mark.parametrize("bus_type", [_EndingBus, _EndingSlowBus],
                         ids=["published-now", "published-awaited"])
async def test_a_worker_whose_submit_channel_ends_reports_the_results_being_written(
    autojump_clock: MockClock, bus_type: type[_EndingBus]
) -> None:
    """A worker stops on its own once its submit channel ends, after every job in
    progress has reported: those whose result is still being written too, once it is
    stored (none of them is run again)."""
    bus = bus_type()
    handled: list[str] = []

    async def counted(job: Job) -> dict[str, Any]:
        handled.append(job.job_id)
        return await echo(job)

    payloads = _SlowThen()
    async with results(bus) as channel, trio.open_nursery() as nursery:
        worker = await nursery.start(serve_worker, bus, payloads, {TOPIC: counted})
        for i in range(3):
            await submit(bus, make_request(f"r:a@{i}"))
        await trio.sleep(1)  # run, their results being written
        assert (len(handled), worker.running, worker.handled) == (3, 3, 0)
        started = trio.current_time()
        bus.inbox.close()
        got = [await next_result(channel) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks  # the worker returned, once they were reported
    assert trio.current_time() - started >= 9
    assert [r.status for r in got] == [JobStatus.SUCCEEDED] * 3
    assert (worker.handled, worker.running, bus.jobs.held) == (3, 0, 0)
    async with results(bus) as channel, open_worker(bus, MemoryPayloadStore(),
                                                    {TOPIC: counted}):
        await assert_no_more_results(channel)  # nothing left to run again
    assert sorted(handled) == ["r:a@0", "r:a@1", "r:a@2"]


async def test_a_job_cancelled_while_its_result_is_written_is_reported_cancelled(
    bus: MemoryBus, autojump_clock: MockClock
) -> None:
    """A job is running until it is reported: cancelled while its result is being
    written (its handler returned), it is reported cancelled at once, and the write's
    reply reports nothing more."""
    async with results(bus) as channel, open_worker(bus, _SlowThen(), {TOPIC: echo}
                                                    ) as worker:
        await submit(bus, make_request("r:a@1"))
        await trio.sleep(1)  # run, its result being written
        assert worker.running == 1
        assert worker.cancel_job("r:a@1", "user asked")
        result = await next_result(channel)
        assert (result.status, result.error_message) == (JobStatus.CANCELLED,
                                                         "cancelled: user asked")
        assert worker.running == 0 and not worker.cancel_job("r:a@1")
        await trio.sleep(20)  # the write answered
        await assert_no_more_results(channel)
        assert bus.jobs.held == 0
    assert (worker.handled, worker.succeeded, worker.failed) == (1, 0, 1)


async def test_a_job_taken_back_while_its_result_is_written_is_not_reported(
    bus: MemoryBus, autojump_clock: MockClock
) -> None:
    """A job the bus takes back (its connection reset: ``on_lost``) while its result is
    being written is counted lost and not reported, as one taken back while it runs."""
    async with results(bus) as channel, open_worker(bus, _SlowThen(), {TOPIC: echo}
                                                    ) as worker:
        await submit(bus, make_request("r:a@1"))
        await trio.sleep(1)  # run, its result being written
        worker._job_lost("r:a@1")  # what the bus's inbox calls
        assert (worker.lost, worker.running) == (1, 0)
        await trio.sleep(20)  # the write answered
        await assert_no_more_results(channel)
        assert bus.jobs.owns("r:a@1")  # not acknowledged
    assert worker.handled == 0


async def test_results_published_from_their_writes_reply_hold_no_slot(
    autojump_clock: MockClock
) -> None:
    """A result reported by its write's reply is published by a task of the worker's,
    not in a slot: a slow publish of it starts no more slots while one is idle."""

    class SlowBus(MemoryBus):
        async def publish(self, subject: str, packet: BusPacket) -> None:
            if subject == SUBJECT_RESULT:
                await trio.sleep(5)
            await super().publish(subject, packet)

    bus = SlowBus()
    async with results(bus) as channel, open_worker(bus, ThenPayloads(), {TOPIC: echo},
                                                    max_concurrency=8) as worker:
        for i in range(6):
            await submit(bus, make_request(f"r:a@{i}"))
            await trio.sleep(0.5)  # run and written; its result being published
        for _ in range(6):
            await next_result(channel)
        assert worker._slots <= 2  # one ran them, one waited for more
        assert worker._grow_at == worker._slots
