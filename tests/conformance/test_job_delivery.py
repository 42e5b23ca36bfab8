"""At-least-once job delivery (SPEC §13), run against every bus backend.

A job request published on ``sys.job.submit`` waits in its topic's queue until a consumer
of that topic (``consume_jobs``) has room; each job goes to exactly one consumer; a
consumer that leaves without acknowledging hands its jobs back, same job id; past the
redelivery bound the attempt is reported failed ("worker lost").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

import pytest
import trio

from cordtrio.backends.job_queues import DEFAULT_MAX_REDELIVERIES, WORKER_LOST
from cordtrio.ports import Bus, JobBus, JobInbox
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
)

WAIT = 5.0


@pytest.fixture
def bus(job_bus: Bus) -> Bus:
    """Every test here runs on the backends that deliver jobs (conftest ``job_bus``)."""
    return job_bus


MARKER = "test.settle"


def job(job_id: str, topic: str = "job.a") -> BusPacket:
    return BusPacket(trace_id=job_id.rpartition(":")[0], sender_id="test",
                     created_at=datetime(2030, 1, 1, tzinfo=UTC),
                     payload=JobRequest(job_id=job_id, topic=topic))


def job_id_of(packet: BusPacket) -> str:
    assert isinstance(packet.payload, JobRequest)
    return packet.payload.job_id


async def settle(bus: Bus) -> None:
    """Let the bus finish what was asked of it so far: a marker published now comes back
    after every earlier operation of this connection was handled and answered."""
    async with bus.subscribe(MARKER) as marks:
        await bus.publish(MARKER, job("marker:m@1"))
        with trio.fail_after(WAIT):
            await marks.receive()


async def take(inbox: JobInbox, n: int) -> list[str]:
    with trio.fail_after(WAIT):
        return [job_id_of(await inbox.receive()) for _ in range(n)]


def buffered(inbox: JobInbox) -> list[str]:
    out = []
    while True:
        try:
            out.append(job_id_of(inbox.receive_nowait()))
        except trio.WouldBlock:
            return out


@asynccontextmanager
async def consumer(bus: Bus, *topics: str, capacity: int = 10) -> AsyncIterator[JobInbox]:
    assert isinstance(bus, JobBus)
    async with bus.consume_jobs(topics, capacity=capacity) as inbox:
        await settle(bus)  # registered with the host before the test goes on
        yield inbox


async def test_backend_delivers_jobs(bus: Bus) -> None:
    assert isinstance(bus, JobBus)


async def test_a_job_published_before_any_worker_waits_for_one(bus: Bus) -> None:
    await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
    await bus.publish(SUBJECT_SUBMIT, job("r:t@1", topic="job.b"))
    async with consumer(bus, "job.a") as a:
        assert await take(a, 1) == ["r:s@1"]
        async with consumer(bus, "job.b") as b:
            assert await take(b, 1) == ["r:t@1"]
        await settle(bus)
        assert buffered(a) == []


async def test_each_job_goes_to_one_consumer_of_its_topic_whatever_their_topic_sets(
    bus: Bus,
) -> None:
    async with (
        consumer(bus, "job.a") as a,
        consumer(bus, "job.a", "job.b") as ab,
        consumer(bus, "job.b") as b,
    ):
        for i in range(6):
            await bus.publish(SUBJECT_SUBMIT, job(f"r:a{i}@1", topic="job.a"))
            await bus.publish(SUBJECT_SUBMIT, job(f"r:b{i}@1", topic="job.b"))
        await settle(bus)
        got_a, got_ab, got_b = buffered(a), buffered(ab), buffered(b)
    assert sorted(got_a + got_ab + got_b) == sorted(
        [f"r:a{i}@1" for i in range(6)] + [f"r:b{i}@1" for i in range(6)])
    assert all(j.startswith("r:a") for j in got_a) and got_a
    assert all(j.startswith("r:b") for j in got_b) and got_b
    assert got_ab


async def test_a_consumer_holds_at_most_its_capacity_until_it_acknowledges(bus: Bus) -> None:
    async with consumer(bus, "job.a", capacity=2) as a:
        for i in range(5):
            await bus.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
        first = await take(a, 2)
        await settle(bus)
        assert buffered(a) == []
        a.ack(first[0])
        assert await take(a, 1) == ["r:s2@1"]  # oldest first
        await settle(bus)
        assert buffered(a) == []
        a.ack(first[1])
        a.ack("r:s2@1")
        assert await take(a, 2) == ["r:s3@1", "r:s4@1"]


async def test_a_consumer_leaving_unacknowledged_hands_its_jobs_to_another(bus: Bus) -> None:
    async with consumer(bus, "job.a", capacity=5) as survivor:
        async with consumer(bus, "job.a", capacity=5) as leaving:
            for i in range(6):
                await bus.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
            await settle(bus)
            kept = buffered(survivor)
            taken = buffered(leaving)
            assert taken and len(kept) + len(taken) == 6
            leaving.ack(taken[0])  # this one is done: it must not come back
        await settle(bus)
        back = buffered(survivor)
    assert sorted(back) == sorted(taken[1:])  # same job ids
    assert set(kept).isdisjoint(back)


async def test_an_acknowledged_job_is_forgotten_and_may_be_published_again(bus: Bus) -> None:
    async with consumer(bus, "job.a") as a:
        await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
        assert await take(a, 1) == ["r:s@1"]
        await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))  # still held: a duplicate
        await settle(bus)
        assert buffered(a) == []
        a.ack("r:s@1")
        await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))  # a result was lost: run it again
        assert await take(a, 1) == ["r:s@1"]


async def test_a_duplicate_of_a_queued_job_is_ignored(bus: Bus) -> None:
    await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
    await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
    async with consumer(bus, "job.a") as a:
        assert await take(a, 1) == ["r:s@1"]
        await settle(bus)
        assert buffered(a) == []


async def test_a_cancel_drops_a_job_still_waiting_for_a_worker(bus: Bus) -> None:
    await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
    await bus.publish(SUBJECT_SUBMIT, job("r:t@1"))
    await bus.publish(SUBJECT_CANCEL, BusPacket(
        trace_id="r", sender_id="test", created_at=datetime(2030, 1, 1, tzinfo=UTC),
        payload=JobCancel(job_id="r:s@1", reason="run cancelled")))
    async with consumer(bus, "job.a") as a:
        assert await take(a, 1) == ["r:t@1"]
        await settle(bus)
        assert buffered(a) == []


async def test_past_the_redelivery_bound_the_attempt_is_reported_lost(bus: Bus) -> None:
    async with bus.subscribe(SUBJECT_RESULT) as results:
        await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
        for _ in range(DEFAULT_MAX_REDELIVERIES + 1):
            async with consumer(bus, "job.a") as doomed:
                assert await take(doomed, 1) == ["r:s@1"]
        with trio.fail_after(WAIT):
            packet = await results.receive()
    result = packet.payload
    assert isinstance(result, JobResult)
    assert result.job_id == "r:s@1"
    assert result.status == JobStatus.FAILED
    assert result.error_code == WORKER_LOST
    assert "worker lost" in result.error_message and "r:s@1" in result.error_message
    async with consumer(bus, "job.a") as late:  # the queue let go of it
        await settle(bus)
        assert buffered(late) == []


async def test_plain_subscribers_of_the_submit_subject_still_see_every_request(
    bus: Bus,
) -> None:
    async with (
        bus.subscribe(SUBJECT_SUBMIT) as tap,
        consumer(bus, "job.a") as a,
    ):
        await bus.publish(SUBJECT_SUBMIT, job("r:s@1"))
        assert await take(a, 1) == ["r:s@1"]
        with trio.fail_after(WAIT):
            assert job_id_of(await tap.receive()) == "r:s@1"


async def test_consumers_of_many_topics_take_the_oldest_job_first(bus: Bus) -> None:
    await bus.publish(SUBJECT_SUBMIT, job("r:b1@1", topic="job.b"))
    await bus.publish(SUBJECT_SUBMIT, job("r:a1@1", topic="job.a"))
    await bus.publish(SUBJECT_SUBMIT, job("r:b2@1", topic="job.b"))
    async with consumer(bus, "job.a", "job.b", capacity=1) as ab:
        got = []
        for _ in range(3):
            (one,) = await take(ab, 1)
            got.append(one)
            ab.ack(one)
    assert got == ["r:b1@1", "r:a1@1", "r:b2@1"]


async def test_many_consumers_share_a_burst_and_nothing_is_lost(bus: Bus) -> None:
    seen: list[str] = []

    async def work(inbox: JobInbox) -> None:
        while True:
            packet = await inbox.receive()
            seen.append(job_id_of(packet))
            await trio.sleep(0)
            inbox.ack(job_id_of(packet))

    async with AsyncExitStack() as stack:
        inboxes = [await stack.enter_async_context(consumer(bus, "job.a", capacity=3))
                   for _ in range(3)]
        async with trio.open_nursery() as nursery:
            for inbox in inboxes:
                nursery.start_soon(work, inbox)
            for i in range(60):
                await bus.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
            with trio.fail_after(WAIT):
                while len(seen) < 60:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert sorted(seen) == sorted(f"r:s{i}@1" for i in range(60))
