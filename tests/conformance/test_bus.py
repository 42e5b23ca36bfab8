"""The bus port (API.md "Bus"), run against every bus backend."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from cordtrio.backends.memory import MemoryBus
from cordtrio.errors import ProtocolError
from cordtrio.ports import Bus
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
)


def packet(n: int, subject_hint: str = "") -> BusPacket:
    return BusPacket(
        trace_id=f"trace-{n}",
        sender_id="test",
        created_at=datetime(2030, 1, 1, tzinfo=UTC),
        payload=JobResult(job_id=f"run:step@{n}", status=JobStatus.SUCCEEDED,
                          worker_id=subject_hint),
    )


def job_ids(packets: list[BusPacket]) -> list[str]:
    out = []
    for p in packets:
        assert isinstance(p.payload, JobResult)
        out.append(p.payload.job_id)
    return out


def drain(channel: trio.abc.ReceiveChannel[BusPacket]) -> list[BusPacket]:
    """Everything already buffered in a memory channel, without waiting."""
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return out


async def receive_all(
    channel: trio.abc.ReceiveChannel[BusPacket], count: int
) -> list[BusPacket]:
    with trio.fail_after(5):
        return [await channel.receive() for _ in range(count)]


async def test_backend_implements_the_bus_protocol(bus: Bus) -> None:
    assert isinstance(bus, Bus)


async def test_every_plain_subscriber_gets_every_packet_in_order(bus: Bus) -> None:
    async with AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(bus.subscribe(SUBJECT_RESULT)) for _ in range(3)]
        for n in range(5):
            await bus.publish(SUBJECT_RESULT, packet(n))
        for sub in subs:
            got = await receive_all(sub, 5)
            assert job_ids(got) == [f"run:step@{n}" for n in range(5)]
            assert got[0] == packet(0)


async def test_a_queue_group_gets_each_packet_exactly_once_spread_over_members(
    bus: Bus,
) -> None:
    members, packets = 4, 40
    async with AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(bus.subscribe(SUBJECT_SUBMIT, queue="workers"))
            for _ in range(members)
        ]
        for n in range(packets):
            await bus.publish(SUBJECT_SUBMIT, packet(n))
        await trio.testing.wait_all_tasks_blocked()
        per_member = [job_ids(drain(sub)) for sub in subs]
    delivered = Counter(j for got in per_member for j in got)
    assert delivered == Counter(f"run:step@{n}" for n in range(packets))  # each exactly once
    assert all(got for got in per_member), per_member  # spread: nobody left out


async def test_plain_subscribers_and_groups_each_get_their_copy(bus: Bus) -> None:
    async with AsyncExitStack() as stack:
        plain = await stack.enter_async_context(bus.subscribe(SUBJECT_RESULT))
        g1 = [await stack.enter_async_context(bus.subscribe(SUBJECT_RESULT, queue="g1"))
              for _ in range(2)]
        g2 = await stack.enter_async_context(bus.subscribe(SUBJECT_RESULT, queue="g2"))
        for n in range(6):
            await bus.publish(SUBJECT_RESULT, packet(n))
        await trio.testing.wait_all_tasks_blocked()
        expected = [f"run:step@{n}" for n in range(6)]
        assert job_ids(drain(plain)) == expected
        assert job_ids(drain(g2)) == expected
        assert sorted(job_ids(drain(g1[0])) + job_ids(drain(g1[1]))) == sorted(expected)


async def test_subjects_match_exactly(bus: Bus) -> None:
    async with bus.subscribe("sys.job") as short, bus.subscribe("sys.job.submit.x") as long:
        await bus.publish("sys.job.submit", packet(1))
        await trio.testing.wait_all_tasks_blocked()
        assert drain(short) == [] and drain(long) == []


async def test_publishing_to_a_subject_nobody_listens_to_is_fine(bus: Bus) -> None:
    with trio.fail_after(5):
        for n in range(10):
            await bus.publish("nobody.listens", packet(n))


async def test_leaving_the_block_unsubscribes_and_closes_the_channel(bus: Bus) -> None:
    async with bus.subscribe(SUBJECT_RESULT, max_buffer=0) as gone:  # type: ignore[call-arg]
        pass
    with trio.fail_after(5):  # an unbuffered subscriber would block this publish
        await bus.publish(SUBJECT_RESULT, packet(1))
    with pytest.raises(trio.ClosedResourceError):
        await gone.receive()
    async with bus.subscribe(SUBJECT_RESULT) as fresh:
        await bus.publish(SUBJECT_RESULT, packet(2))
        assert job_ids(await receive_all(fresh, 1)) == ["run:step@2"]


async def test_a_full_subscriber_makes_publish_wait_or_gets_the_packet_queued(
    bus_backend: Any,  # conftest.BusBackend
) -> None:
    """A plain subscriber whose buffer is full: on a bus with ``backpressure`` (the memory
    bus, an nng router's own subscribers) ``publish`` waits for it to read; on an nng
    client (a remote subscriber) the router queues the packet for it instead, so that a
    slow subscriber never stalls publishers. Either way it gets every packet, in order."""
    bus = bus_backend.bus
    waits = "backpressure" in bus_backend.capabilities
    async with bus.subscribe(SUBJECT_RESULT, max_buffer=1) as sub:  # type: ignore[call-arg]
        await bus.publish(SUBJECT_RESULT, packet(0))
        done = trio.Event()

        async def publish_second() -> None:
            await bus.publish(SUBJECT_RESULT, packet(1))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_second)
            if waits:
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()  # buffer full: the publisher waits
            else:
                with trio.fail_after(5):  # buffer full: queued for it, no wait
                    await done.wait()
            assert job_ids([await sub.receive()]) == ["run:step@0"]
            with trio.fail_after(5):
                await done.wait()
        assert job_ids([await sub.receive()]) == ["run:step@1"]


async def test_a_queue_group_prefers_members_with_room_and_waits_when_all_are_full(
    bus: Bus,
) -> None:
    async with AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(
                bus.subscribe(SUBJECT_SUBMIT, queue="w", max_buffer=1)  # type: ignore[call-arg]
            )
            for _ in range(2)
        ]
        with trio.fail_after(5):  # one free slot each: neither publish waits
            await bus.publish(SUBJECT_SUBMIT, packet(0))
            await bus.publish(SUBJECT_SUBMIT, packet(1))
        done = trio.Event()

        async def publish_third() -> None:
            await bus.publish(SUBJECT_SUBMIT, packet(2))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_third)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # every member is full: the publisher waits
            first = [await sub.receive() for sub in subs]  # one each: room again
            with trio.fail_after(5):
                await done.wait()
        await trio.testing.wait_all_tasks_blocked()
        rest = [p for sub in subs for p in drain(sub)]
        assert sorted(job_ids(first)) == ["run:step@0", "run:step@1"]
        assert job_ids(rest) == ["run:step@2"]


async def test_a_closed_subscriber_is_dropped_without_losing_group_packets(bus: Bus) -> None:
    async with AsyncExitStack() as stack:
        plain_dead = await stack.enter_async_context(bus.subscribe(SUBJECT_SUBMIT))
        plain_live = await stack.enter_async_context(bus.subscribe(SUBJECT_SUBMIT))
        dead = await stack.enter_async_context(bus.subscribe(SUBJECT_SUBMIT, queue="w"))
        live = await stack.enter_async_context(bus.subscribe(SUBJECT_SUBMIT, queue="w"))
        await plain_dead.aclose()
        await dead.aclose()
        with trio.fail_after(5):
            for n in range(4):
                await bus.publish(SUBJECT_SUBMIT, packet(n))
        await trio.testing.wait_all_tasks_blocked()
        expected = [f"run:step@{n}" for n in range(4)]
        assert job_ids(drain(plain_live)) == expected
        assert job_ids(drain(live)) == expected


async def test_a_subscriber_leaving_releases_a_publisher_waiting_on_it(bus: Bus) -> None:
    leave = trio.Event()

    async def leaving_member() -> None:
        async with bus.subscribe(SUBJECT_SUBMIT, queue="w", max_buffer=0):  # type: ignore[call-arg]
            await leave.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leaving_member)  # subscribes first: first in the rotation
        await trio.testing.wait_all_tasks_blocked()
        async with bus.subscribe(
            SUBJECT_SUBMIT, queue="w", max_buffer=0  # type: ignore[call-arg]
        ) as survivor:
            nursery.start_soon(bus.publish, SUBJECT_SUBMIT, packet(7))
            await trio.testing.wait_all_tasks_blocked()  # nobody receives: publish waits
            leave.set()
            with trio.fail_after(5):
                got = await survivor.receive()
    assert job_ids([got]) == ["run:step@7"]


async def test_packets_of_every_payload_kind_arrive_equal(bus: Bus) -> None:
    sent = [
        BusPacket(trace_id="t", sender_id="s", payload=JobRequest(
            job_id="r:s@1", topic="job.x", env={"a": "b"}, labels={"l": "v"})),
        BusPacket(trace_id="t", payload=JobCancel(job_id="r:s@1", reason="why")),
        BusPacket(trace_id="t"),
    ]
    async with bus.subscribe("kinds") as sub:
        for p in sent:
            await bus.publish("kinds", p)
        assert await receive_all(sub, len(sent)) == sent


async def test_a_trailing_wildcard_matches_longer_subjects(bus_backend: Any) -> None:
    if "wildcard" not in bus_backend.capabilities:
        pytest.skip("backend has no '>' wildcard")
    bus = bus_backend.bus
    async with bus.subscribe("sys.job.>") as jobs, bus.subscribe(">") as everything:
        for subject in ("sys.job.submit", "sys.job.result.x", "sys.job", "sys.heartbeat"):
            await bus.publish(subject, packet(0, subject))
        await trio.testing.wait_all_tasks_blocked()
        assert [p.payload.worker_id for p in drain(jobs)] == [
            "sys.job.submit", "sys.job.result.x"]
        assert len(drain(everything)) == 4


# ------------------------------------------------------------------ memory backend only


async def test_memory_bus_hands_over_the_same_object_without_codec() -> None:
    bus = MemoryBus()
    p = packet(1)
    async with bus.subscribe("s") as a, bus.subscribe("s") as b:
        await bus.publish("s", p)
        assert (await a.receive()) is p
        assert (await b.receive()) is p


async def test_memory_bus_with_codec_gives_each_subscriber_its_own_decoded_copy() -> None:
    bus = MemoryBus(codec=True)
    p = packet(1)
    async with bus.subscribe("s") as a, bus.subscribe("s") as b:
        await bus.publish("s", p)
        got_a, got_b = await a.receive(), await b.receive()
    assert got_a == p == got_b
    assert got_a is not p and got_b is not got_a


async def test_memory_bus_listen_callback_shares_packets_as_a_subscriber_would() -> None:
    """A ``listen`` callback alone on its subject is called straight from ``publish``; a
    plain, a wildcard or a second group member joining later gets its packets as before,
    and once they leave the callback alone gets them again."""
    bus = MemoryBus()
    heard: list[BusPacket] = []
    async with bus.listen("res", "engines", heard.append):
        await bus.publish("res", packet(1))
        async with bus.subscribe("res") as plain:
            await bus.publish("res", packet(2))
            assert job_ids(drain(plain)) == ["run:step@2"]
        async with bus.subscribe(">") as everything:
            await bus.publish("res", packet(3))
            assert job_ids(drain(everything)) == ["run:step@3"]
        async with bus.subscribe("res", queue="engines") as member:
            for n in (4, 5):
                await bus.publish("res", packet(n))
            assert job_ids(drain(member)) == ["run:step@5"]  # round robin: one each
        await bus.publish("res", packet(6))
        async with bus.listen("res", "engines", lambda _: 1 / 0):  # a failing callback
            for n in (7, 8):
                await bus.publish("res", packet(n))  # its error is logged, not raised
    await bus.publish("res", packet(9))  # nobody listens any more
    assert job_ids(heard) == [f"run:step@{n}" for n in (1, 2, 3, 4, 6, 7)]


async def test_memory_bus_rejects_what_is_not_a_packet() -> None:
    with pytest.raises(ProtocolError, match=r"s\.subject"):
        await MemoryBus().publish("s.subject", {"job_id": "x"})  # type: ignore[arg-type]


async def test_memory_bus_round_robins_a_group_with_room() -> None:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(bus.subscribe("s", queue="q")) for _ in range(3)]
        for n in range(9):
            await bus.publish("s", packet(n))
        per = [job_ids(drain(s)) for s in subs]
    assert per == [[f"run:step@{n}" for n in range(i, 9, 3)] for i in range(3)]


async def test_memory_publish_is_a_checkpoint() -> None:
    bus = MemoryBus()
    with trio.CancelScope() as scope:
        scope.cancel()
        async with bus.subscribe("s") as sub:
            with pytest.raises(trio.Cancelled):
                await bus.publish("s", packet(1))
            assert drain(sub) == []  # cancelled before delivery: nothing delivered


async def test_memory_publish_cancelled_while_waiting_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = MemoryBus()
    async with bus.subscribe("s", max_buffer=0):
        with trio.move_on_after(1) as scope:
            await bus.publish("s", packet(1))
        assert scope.cancelled_caught


async def test_memory_subscribe_rejects_a_negative_buffer() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        async with MemoryBus().subscribe("s", max_buffer=-1):
            pass
