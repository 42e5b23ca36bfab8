"""A local consumer's job inbox (``backends.local_jobs``): what a worker's slots rely on
when they receive from it directly, without trying ``receive_nowait`` first."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from backends.local_jobs import LocalJobInbox
from cordtrio.backends.memory import MemoryBus
from cordtrio.protocol import PROTOCOL_VERSION, BusPacket, JobRequest


def _packet(job_id: str) -> BusPacket:
    return BusPacket("t", "test", datetime.now(UTC), PROTOCOL_VERSION,
                     JobRequest(job_id=job_id, topic="t"))


def _inbox() -> LocalJobInbox:
    return LocalJobInbox(lambda consumer, job_id: None)


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_buffered_job_is_received_in_order_without_a_schedule_point() -> None:
    inbox = _inbox()
    first, second = _packet("a"), _packet("b")
    inbox.deliver(first)
    inbox.deliver(second)
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    got = [await inbox.receive(), inbox.receive_nowait()]
    trio.lowlevel.remove_instrument(steps)
    assert got == [first, second]
    assert steps.steps == 0
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_receive_is_a_cancellation_point_and_loses_no_job() -> None:
    inbox = _inbox()
    job = _packet("a")
    inbox.deliver(job)
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.receive()
    assert scope.cancelled_caught
    assert inbox.receive_nowait() is job  # still there for the next reader


async def test_waiting_readers_get_jobs_longest_waiting_first() -> None:
    inbox = _inbox()
    got: list[tuple[int, str]] = []

    async def reader(n: int) -> None:
        packet = await inbox.receive()
        got.append((n, packet.payload.job_id))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(reader, n)
            await trio.testing.wait_all_tasks_blocked()
        for job_id in ("a", "b", "c"):
            inbox.deliver(_packet(job_id))
    assert sorted(got) == [(0, "a"), (1, "b"), (2, "c")]


async def test_a_cancelled_reader_leaves_the_queue_of_readers() -> None:
    inbox = _inbox()
    scope = trio.CancelScope()

    async def reader() -> None:
        with scope:
            await inbox.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    assert scope.cancelled_caught
    job = _packet("a")
    inbox.deliver(job)  # nobody waits: buffered, not handed to the cancelled reader
    assert inbox.receive_nowait() is job


async def test_deliver_hands_to_readers_while_they_wait_and_buffers_otherwise() -> None:
    """``deliver`` is the buffer's ``append`` while no reader waits and a hand-over while
    some do: each switch happens as the last reader is served, cancelled or closed."""
    inbox = _inbox()
    got: list[str] = []
    scope = trio.CancelScope()

    async def reader(cancellable: bool) -> None:
        with scope if cancellable else trio.CancelScope():
            got.append((await inbox.receive()).payload.job_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, True)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader, False)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # the first reader leaves; the second still waits
        await trio.testing.wait_all_tasks_blocked()
        inbox.deliver(_packet("a"))  # to the waiting reader
        inbox.deliver(_packet("b"))  # nobody waits any more: buffered
    assert got == ["a"]
    assert inbox.receive_nowait().payload.job_id == "b"
    assert inbox.ready == deque()


async def test_close_ends_waiting_readers_and_leaves_buffered_jobs_to_read() -> None:
    inbox = _inbox()
    ended: list[bool] = []

    async def reader() -> None:
        try:
            await inbox.receive()
        except trio.EndOfChannel:
            ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()
    assert ended == [True]

    inbox = _inbox()
    job = _packet("a")
    inbox.deliver(job)
    inbox.close()
    inbox.deliver(_packet("b"))  # leaving: dropped (its consumer hands it on)
    assert [packet async for packet in inbox] == [job]
    with pytest.raises(trio.EndOfChannel):
        inbox.receive_nowait()


async def test_a_worker_on_the_memory_bus_receives_from_the_inbox_directly() -> None:
    bus = MemoryBus()
    async with bus.consume_jobs(["t"], capacity=2) as inbox:
        assert inbox.receive_takes_ready_job
        await bus.publish("sys.job.submit", _packet("a"))
        assert (await inbox.receive()).payload.job_id == "a"


def test_ack_calls_the_hosts_acknowledge_with_the_consumer_once_it_is_set() -> None:
    calls: list[tuple[object, str]] = []
    inbox = LocalJobInbox(lambda consumer, job_id: calls.append((consumer, job_id)))
    inbox.ack("a")  # no consumer yet: nothing delivered, nothing to acknowledge
    consumer = object()
    inbox.consumer = consumer  # type: ignore[assignment]
    assert inbox.consumer is consumer
    inbox.ack("b")
    inbox.consumer = None
    inbox.ack("c")
    assert calls == [(consumer, "b")]

