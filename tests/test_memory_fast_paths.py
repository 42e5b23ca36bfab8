"""The in-process job path's calls that skip a layer give what the general calls give.

``MemoryBus.publish_now`` and ``submit_now`` against an awaited ``publish``, under every
kind of subscription that changes what a publish does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from cordtrio.backends.job_queues import JobQueues, QueuedJob
from cordtrio.backends.memory import MemoryBus
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


def _packet(payload: Any) -> BusPacket:
    return BusPacket("t", "test", datetime(2026, 1, 1, tzinfo=UTC), 1, payload)


_PACKETS: list[tuple[str, Callable[[], BusPacket]]] = [
    (SUBJECT_SUBMIT, lambda: _packet(JobRequest("r:a@1", "jobs"))),
    (SUBJECT_SUBMIT, lambda: _packet(JobResult("r:a@1"))),  # not a job request
    (SUBJECT_RESULT, lambda: _packet(JobResult("r:a@1", JobStatus.SUCCEEDED))),
    (SUBJECT_CANCEL, lambda: _packet(JobCancel("r:q@1"))),
    ("other.subject", lambda: _packet(JobResult("x"))),
]

# (subscriptions as (kind, subject, queue)), whether the bus encodes packets
_SETUPS: list[tuple[list[tuple[str, str, str]], bool]] = [
    ([], False),
    ([("listen", SUBJECT_RESULT, "engines")], False),
    ([("listen", SUBJECT_RESULT, "engines")], True),
    ([("listen", SUBJECT_SUBMIT, "taps")], False),
    ([("listen", SUBJECT_CANCEL, "taps")], False),
    ([("listen", "other.subject", "q")], False),
    ([("listen", SUBJECT_RESULT, "engines"), ("subscribe", SUBJECT_RESULT, "")], False),
    ([("listen", SUBJECT_RESULT, "engines"), ("subscribe", "sys.>", "")], False),
    ([("listen", SUBJECT_RESULT, "engines"), ("subscribe", ">", "")], False),
    ([("subscribe", SUBJECT_SUBMIT, "")], False),
    ([("subscribe", SUBJECT_SUBMIT, "q")], False),
]


@asynccontextmanager
async def _bus(subs: list[tuple[str, str, str]], codec: bool, seen: list[Any]
               ) -> AsyncIterator[tuple[MemoryBus, list[Any]]]:
    bus = MemoryBus(codec=codec, max_pending=2)
    channels: list[Any] = []
    async with AsyncExitStack() as stack:
        for i, (kind, subject, queue) in enumerate(subs):
            if kind == "listen":
                await stack.enter_async_context(bus.listen(
                    subject, queue, lambda p, i=i: seen.append((i, p.payload))))
            else:
                channels.append((i, await stack.enter_async_context(
                    bus.subscribe(subject, queue))))
        inbox = await stack.enter_async_context(bus.consume_jobs(["jobs"], capacity=1))
        await bus.publish(SUBJECT_SUBMIT, _packet(JobRequest("r:p@1", "jobs")))  # held
        await bus.publish(SUBJECT_SUBMIT, _packet(JobRequest("r:q@1", "jobs")))  # queued
        del seen[:]
        assert inbox.receive_nowait().payload.job_id == "r:p@1"
        for _, channel in channels:
            while True:
                try:
                    channel.receive_nowait()
                except trio.WouldBlock:
                    break
        yield bus, [inbox, channels]


def _state(bus: MemoryBus, seen: list[Any], handles: list[Any]) -> Any:
    inbox, channels = handles
    got = []
    for i, channel in channels:
        while True:
            try:
                got.append((i, channel.receive_nowait().payload))
            except trio.WouldBlock:
                break
    jobs = []
    while True:
        try:
            jobs.append(inbox.receive_nowait().payload)
        except trio.WouldBlock:
            break
    return (list(seen), got, jobs, bus.jobs.pending, bus.jobs.held,
            sorted(j for j in ("r:a@1", "r:p@1", "r:q@1") if bus.jobs.owns(j)))


@pytest.mark.parametrize("subs, codec", _SETUPS)
@pytest.mark.parametrize("subject, make", _PACKETS)
async def test_publish_now_does_what_publish_does_or_nothing(
        subs: list[tuple[str, str, str]], codec: bool, subject: str,
        make: Callable[[], BusPacket]) -> None:
    seen_now: list[Any] = []
    seen: list[Any] = []
    async with _bus(subs, codec, seen_now) as (fast, fast_handles), \
            _bus(subs, codec, seen) as (general, general_handles):
        before = _state(fast, seen_now, fast_handles)
        assert before == _state(general, seen, general_handles)
        packet = make()
        if fast.publish_now(subject, packet):
            await trio.lowlevel.checkpoint()
        else:
            assert _state(fast, seen_now, fast_handles) == before  # nothing done
            await fast.publish(subject, packet)
        await general.publish(subject, make())
        await trio.lowlevel.checkpoint()
        assert _state(fast, seen_now, fast_handles) == _state(general, seen, general_handles)


async def test_publish_now_leaves_the_job_path_to_publish_when_others_take_part() -> None:
    """A listener of ``sys.job.submit`` or ``sys.job.cancel`` (which also drops a queued
    job) is served by ``publish``; so is every packet of a bus that encodes them."""
    job = _packet(JobRequest("r:a@1", "jobs"))
    for subject, packet in ((SUBJECT_SUBMIT, job), (SUBJECT_CANCEL, _packet(JobCancel("x")))):
        bus = MemoryBus()
        async with bus.listen(subject, "q", lambda p: None):
            assert not bus.publish_now(subject, packet)
    bus = MemoryBus(codec=True)
    async with bus.listen(SUBJECT_RESULT, "q", lambda p: None):
        assert not bus.publish_now(SUBJECT_RESULT, _packet(JobResult("r:a@1")))
        assert not bus.publish_now(SUBJECT_SUBMIT, job)


_POINTERS: list[Any] = [
    "redis://ctx:r:a@1", "redis://res:r:a@1", "redis://ctx:r:b@1", "redis://res:r:b@1",
    "redis://ctx:r:old@1", "redis://res:r:old@1", "redis://ctx:r:missing@1", "ctx:r:a@1",
    "res:r:a@1", "redis://ctx:", "redis://res:", "redis://", "", "redis://ctx:r:a@1 ",
    "redis://ctx:a\nb", "redis://wf:x", "http://ctx:r:a@1", "redis://res:r:a@1\x00", 7, None,
    b"redis://ctx:r:a@1", type("Pointer", (str,), {})("redis://ctx:r:a@1"),
    ["redis://res:r:a@1"], "redis://res:r:late@1", "redis://res:r:big@1",
    "redis://ctx:r:empty@1",
]


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("value", call().value_or_text())
    except Exception as exc:
        return (type(exc), str(exc))


def _output(call: Callable[[], Any]) -> Any:
    try:
        return ("output", call())
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("value", [
    {"ok": True}, {}, [1, "x"], None, "text", {"nested": {"a": [1, 2.5, None]}},
    {"bad": object()}, {1: "int key"}, float("nan"), {"s": "x" * 5000},
])
@pytest.mark.parametrize("key", ["res:r:a@1", "ctx:r:a@1", "res:", "res:a\nb", "res:a "])
def test_storing_a_result_value_in_one_call_is_encoding_then_storing(
        value: Any, key: str) -> None:
    """``put_result_value_now(key, value)`` stores, or fails, as
    ``put_result_payload_now(key, JsonPayload.of(value, False))``: the encoding's errors
    first, then the key's."""
    from cordtrio.backends.memory import MemoryPayloadStore
    from cordtrio.json_payloads import JsonPayload, parts_of_kept

    def outcome(call: Callable[[MemoryPayloadStore], None]) -> Any:
        store = MemoryPayloadStore(ttl_seconds=None)
        try:
            call(store)
        except Exception as exc:
            return (type(exc), str(exc))
        # the parts each entry stands for (a snapshot may be kept as its bytes alone)
        return [{p: parts_of_kept(e, compact) for p, e in half.items()}
                for half, compact in zip(store._halves, (True, False), strict=True)]

    assert outcome(lambda store: store.put_result_value_now(key, value)) == outcome(
        lambda store: store.put_result_payload_now(key, JsonPayload.of(value, False)))


@pytest.mark.parametrize("pointer", _POINTERS)
async def test_reading_a_payload_at_a_pointer_is_the_general_read(
        pointer: Any, autojump_clock: trio.testing.MockClock) -> None:
    """``context_payload_at_now``/``result_payload_at_now`` (one frame for a stored key)
    answer, or fail, as the general read of the key the pointer names: payloads and
    bytes, live and expired entries, good and bad pointers."""
    from cordtrio.backends.memory import MemoryPayloadStore
    from cordtrio.json_payloads import JsonPayload
    from cordtrio.payloads import RESULT_PREFIX, key_from_pointer

    store = MemoryPayloadStore(ttl_seconds=60)
    store.put_context_payload_now("ctx:r:old@1", JsonPayload.of({"old": 1}, True))
    store.put_result_payload_now("res:r:old@1", JsonPayload.of([1, 2], False))
    await trio.sleep(61)
    store.put_context_payload_now("ctx:r:a@1", JsonPayload.of({"a": [1, "x"]}, True))
    store.put_result_payload_now("res:r:a@1", JsonPayload.of({"ok": True}, False))
    await store.put_context("ctx:r:b@1", b'{"b": 2}')
    await store.put_result("res:r:b@1", b"not json")
    store.put_result_payload_now("res:r:big@1", JsonPayload.of({"s": "x" * 100}, False))
    store.put_context_value_now("ctx:r:empty@1", {})  # the shared empty snapshot
    for wait in (0, 30, 31):
        await trio.sleep(wait)
        if wait == 30:
            store.put_result_payload_now("res:r:late@1", JsonPayload.of({"late": 1}, False))
        # at last "a", "b" and "big" have expired, not yet purged (no write since)
        assert _outcome(lambda: store.context_payload_at_now(pointer)) == _outcome(
            lambda: store.get_context_payload_now(key_from_pointer(pointer)))
        assert _outcome(lambda: store.result_payload_at_now(pointer)) == _outcome(
            lambda: store.get_result_payload_now(key_from_pointer(pointer, RESULT_PREFIX)))
        # ``context_value_at_now``: the input's value, or None (then read the payload)
        value = store.context_value_at_now(pointer)
        if value is not None:
            assert ("value", value) == _outcome(lambda: store.context_payload_at_now(pointer))
            value["mutated"] = True  # a fresh copy: the stored input is unchanged
            assert store.context_value_at_now(pointer) != value
        elif pointer in ("redis://ctx:r:a@1", "redis://ctx:r:empty@1") and wait == 0:
            raise AssertionError("context_value_at_now missed a live snapshot")
        for limit in (10, 1000):  # ``result_output_at_now``: the output and whether too large
            def general(limit: int = limit) -> Any:
                data = store.get_result_payload_now(key_from_pointer(pointer, RESULT_PREFIX))
                return data.value_or_text(), data.too_large(limit)

            assert _output(lambda limit=limit: store.result_output_at_now(pointer, limit)) \
                == _output(general)
    for read_bytes, get in ((store.get_context, store.get_context_payload),
                            (store.get_result, store.get_result_payload)):
        try:
            key = key_from_pointer(pointer)
        except Exception:
            continue
        try:
            expected: Any = (await get(key)).text()
        except Exception as exc:
            expected = (type(exc), str(exc))
        try:
            got: Any = await read_bytes(key)
        except Exception as exc:
            got = (type(exc), str(exc))
        assert got == expected


@pytest.mark.parametrize("subs, codec", _SETUPS)
async def test_submit_now_does_what_publishing_the_packet_does_or_nothing(
        subs: list[tuple[str, str, str]], codec: bool) -> None:
    """``MemoryBus.submit_now`` (a job request kept bare, no packet built) against an
    awaited ``publish`` of its packet: the same subscribers see the same, the same jobs
    are queued, and a consumer that takes packets is handed the same packet."""
    seen_now: list[Any] = []
    seen: list[Any] = []
    async with _bus(subs, codec, seen_now) as (fast, fast_handles), \
            _bus(subs, codec, seen) as (general, general_handles):
        before = _state(fast, seen_now, fast_handles)
        packet = _packet(JobRequest("r:a@1", "jobs"))
        request = packet.payload
        assert isinstance(request, JobRequest) and packet.created_at is not None
        if not fast.submit_now(request, packet.trace_id, packet.created_at,
                               packet.sender_id):
            assert _state(fast, seen_now, fast_handles) == before  # nothing done
            await fast.publish(SUBJECT_SUBMIT, packet)
        await general.publish(SUBJECT_SUBMIT, _packet(JobRequest("r:a@1", "jobs")))
        await trio.lowlevel.checkpoint()
        assert _state(fast, seen_now, fast_handles) == _state(general, seen, general_handles)
        handed: list[list[BusPacket]] = []
        for handles in (fast_handles, general_handles):
            inbox = handles[0]
            inbox.ack("r:p@1")  # the queued jobs are handed on, one by one
            got = [inbox.receive_nowait()]
            inbox.ack("r:q@1")
            got.append(inbox.receive_nowait())
            handed.append(got)
        assert handed[0] == handed[1]
        assert [p.payload.job_id for p in handed[0]] == ["r:q@1", "r:a@1"]


def test_a_job_handed_to_its_topics_one_consumer_is_the_queued_job_init_makes() -> None:
    """``JobQueues.offer`` sets the fields of the usual job (held at once by its topic's
    one consumer) one by one: each as ``QueuedJob.__init__`` sets it."""
    queues = JobQueues()
    consumer, _ = queues.add(["jobs"], 2, "inbox")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    request = JobRequest("r:a@1", "jobs")
    job = queues.offer("r:a@1", "jobs", request, "r", "engine-1", at)
    assert job is not None and job.__class__ is QueuedJob
    expected = QueuedJob("r:a@1", "jobs", request, job.seq, 1, consumer, False, "r",
                         "engine-1", at)
    for f in fields(QueuedJob):
        assert getattr(job, f.name) == getattr(expected, f.name), f.name
    assert queues.get("r:a@1") is job and consumer.held == {"r:a@1": job}
    later = queues.offer("r:b@1", "jobs", request)  # a packet's job: the defaults
    assert later is not None and later.seq > job.seq
    assert (later.trace_id, later.sender_id, later.created_at) == ("", "", None)


def test_an_ack_that_hands_out_nothing_makes_no_list() -> None:
    """``JobQueues.ack`` hands back one shared empty tuple when it hands out no job (the
    usual ack: nothing queued), and the jobs it handed to the consumer when one waited."""
    queues = JobQueues()
    consumer, _ = queues.add(["jobs"], 1, "inbox")
    assert queues.offer("r:a@1", "jobs", JobRequest("r:a@1", "jobs")) is not None
    none_queued = queues.ack(consumer, "r:a@1")
    unknown = queues.ack(consumer, "r:x@1")
    assert none_queued == () and none_queued is unknown
    assert queues.offer("r:b@1", "jobs", JobRequest("r:b@1", "jobs")) is not None
    assert queues.offer("r:c@1", "jobs", JobRequest("r:c@1", "jobs")) is None  # queued
    handed = queues.ack(consumer, "r:b@1")
    assert [(a.consumer, a.job.job_id) for a in handed] == [(consumer, "r:c@1")]
