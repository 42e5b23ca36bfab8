"""The router's calls for its own process: ``listen`` (``DirectBus``) and ``publish_now``
(``PublishNow``), and the result packet the router decodes once for its holder check and
hands to a local subscriber. Over real sockets (``ipc://``); every wait is bounded."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from nng_waits import WAIT, eventually

from cordtrio.backends.nng import NngBus, NngRouter, open_nng_bus, open_nng_router
from cordtrio.ports import DirectBus, PublishNow, own_call
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobProgress,
    JobRequest,
    JobResult,
    JobStatus,
    decode_packet,
    encode_packet,
)


def job(job_id: str, topic: str = "job.a") -> BusPacket:
    return BusPacket(trace_id=job_id.rpartition(":")[0], sender_id="test",
                     created_at=datetime(2030, 1, 1, tzinfo=UTC),
                     payload=JobRequest(job_id=job_id, topic=topic))


def result(job_id: str) -> BusPacket:
    return BusPacket(trace_id="t", sender_id="worker",
                     created_at=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC),
                     payload=JobResult(job_id=job_id, status=JobStatus.SUCCEEDED,
                                       result_ptr=f"res:{job_id}", execution_ms=3))




@asynccontextmanager
async def router_and_client(url: str) -> AsyncIterator[tuple[NngRouter, NngBus]]:
    async with open_nng_router(url) as router, \
            open_nng_bus(router.urls[0], connect_timeout=WAIT) as client:
        yield router, client


async def test_the_router_offers_the_direct_calls_and_a_subclass_that_changes_publish_not(
    url: str,
) -> None:
    class Observed(NngRouter):
        async def publish(self, subject: str, packet: BusPacket) -> None:
            await super().publish(subject, packet)

    assert NngRouter.publishes_now and not Observed.publishes_now
    async with open_nng_router(url) as router:
        assert isinstance(router, DirectBus) and isinstance(router, PublishNow)
        assert own_call(router, "publishes_now", "publish_now") == router.publish_now


async def test_a_listener_hears_what_a_subscriber_would_from_clients_and_the_router(
    url: str,
) -> None:
    heard: list[BusPacket] = []
    async with router_and_client(url) as (router, client):
        async with router.listen("s", "", heard.append), router.subscribe("s") as channel:
            await client.publish("s", result("r:a@1"))  # puback: the listener has it
            assert [p.payload for p in heard] == [result("r:a@1").payload]
            await router.publish("s", result("r:b@1"))
            assert len(heard) == 2 and heard[1] == result("r:b@1")
            got = [channel.receive_nowait(), channel.receive_nowait()]
            assert got == heard and all(a is not b for a, b in zip(got, heard, strict=True))
        await client.publish("s", result("r:c@1"))  # the listener left with its block
        assert len(heard) == 2


async def test_a_listener_in_a_queue_group_takes_its_turn(url: str) -> None:
    heard: list[BusPacket] = []
    async with router_and_client(url) as (router, client), \
            router.listen("s", "g", heard.append), router.subscribe("s", queue="g") as member:
        for n in range(4):
            await client.publish("s", result(f"r:s@{n}"))
        read = []
        while True:
            try:
                read.append(member.receive_nowait())
            except trio.WouldBlock:
                break
    assert len(heard) == len(read) == 2  # round robin, each packet once


async def test_a_failing_listener_is_logged_and_the_frame_goes_on(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[BusPacket] = []

    def failing(packet: BusPacket) -> None:
        raise RuntimeError("listener bug")

    caplog.set_level(logging.ERROR, logger="cordtrio.bus.nng")
    async with router_and_client(url) as (router, client), \
            router.listen("s", "", failing), router.listen("s", "", heard.append), \
            trio.open_nursery() as nursery:  # two publishes, likely one frame
        nursery.start_soon(client.publish, "s", result("r:a@1"))
        nursery.start_soon(client.publish, "s", result("r:b@1"))
    assert sorted(p.payload.job_id for p in heard) == ["r:a@1", "r:b@1"]  # type: ignore[union-attr]
    assert "a bus listener failed" in caplog.text


async def test_publish_now_hands_a_job_to_a_remote_worker_without_awaiting(url: str) -> None:
    async with router_and_client(url) as (router, client), \
            client.consume_jobs(["job.a"], capacity=2) as inbox:
        assert router.publish_now(SUBJECT_SUBMIT, job("r:a@1"))
        with trio.fail_after(WAIT):
            got = await inbox.receive()
        assert got == job("r:a@1")
        assert router.held_jobs == 1
        inbox.ack("r:a@1")
        await eventually(lambda: router.held_jobs == 0, "the ack")
        # what it leaves to ``publish``, having done nothing: other subjects and
        # packets, a subject somebody subscribes to, full queues, a closed router
        assert not router.publish_now(SUBJECT_RESULT, result("r:a@1"))
        assert not router.publish_now(SUBJECT_CANCEL, BusPacket(payload=JobCancel("r:b@1")))
        assert not router.publish_now(SUBJECT_SUBMIT, BusPacket(payload=JobResult("x")))
        async with router.subscribe(SUBJECT_SUBMIT):
            assert not router.publish_now(SUBJECT_SUBMIT, job("r:b@1"))
        async with router.subscribe("sys.>"):
            assert not router.publish_now(SUBJECT_SUBMIT, job("r:b@1"))
        assert router.pending_jobs == 0 and router.held_jobs == 0
    async with open_nng_router(url, max_pending=1) as full:
        assert full.publish_now(SUBJECT_SUBMIT, job("r:a@1"))  # nobody takes it: queued
        assert not full.publish_now(SUBJECT_SUBMIT, job("r:b@1"))
        assert full.pending_jobs == 1
    assert not full.publish_now(SUBJECT_SUBMIT, job("r:c@1"))  # closed


async def test_publish_now_and_publish_queue_the_same_bytes(url: str) -> None:
    async with open_nng_router(url) as a, open_nng_router(url + "2") as b:
        assert a.publish_now(SUBJECT_SUBMIT, job("r:a@1"))
        await b.publish(SUBJECT_SUBMIT, job("r:a@1"))
        assert a.jobs.get("r:a@1").item == b.jobs.get("r:a@1").item  # type: ignore[union-attr]


async def test_a_result_decoded_for_the_holder_check_reaches_local_subscribers_equal(
    url: str,
) -> None:
    """The first local subscriber takes the packet the holder check decoded; every other
    one decodes its own copy: all equal to what decoding the wire gives, none shared."""
    heard: list[BusPacket] = []
    async with router_and_client(url) as (router, client), AsyncExitStack() as stack:
        inbox = await stack.enter_async_context(client.consume_jobs(["job.a"], capacity=1))
        await stack.enter_async_context(router.listen(SUBJECT_RESULT, "engines",
                                                      heard.append))
        await stack.enter_async_context(router.listen(SUBJECT_RESULT, "", heard.append))
        plain = await stack.enter_async_context(router.subscribe(SUBJECT_RESULT))
        await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
        with trio.fail_after(WAIT):
            await inbox.receive()
        assert router.held_jobs == 1  # held by the client: the holder check decodes
        await client.publish(SUBJECT_RESULT, result("r:a@1"))
        inbox.ack("r:a@1")
        packets = [*heard, plain.receive_nowait()]
    expected = decode_packet(encode_packet(result("r:a@1")))
    assert packets == [expected] * 3
    assert len({id(p) for p in packets}) == 3


@pytest.mark.parametrize("company", ["alone", "with a subscriber"])
async def test_a_listener_of_payloads_alone_gets_what_its_packet_callback_would(
    url: str, company: str
) -> None:
    """``listen(on_payload=...)``: alone on its subject, a client's result (held or not
    held here) and progress reach ``on_payload`` with no packet built, equal to the payload
    of the packet the callback gets otherwise; with another subscriber, the callback gets
    the packet; the router's own publishes go to the callback either way."""
    packets: list[BusPacket] = []
    payloads: list[object] = []
    progress = BusPacket("t", "worker", datetime(2030, 1, 1, tzinfo=UTC),
                         payload=JobProgress(job_id="r:b@1", percent=5))
    async with router_and_client(url) as (router, client), AsyncExitStack() as stack:
        assert router.listens_for_payloads
        inbox = await stack.enter_async_context(client.consume_jobs(["job.a"], capacity=1))
        for subject in (SUBJECT_RESULT, SUBJECT_PROGRESS):
            await stack.enter_async_context(router.listen(
                subject, "engines", packets.append, on_payload=payloads.append))
        if company != "alone":
            for subject in (SUBJECT_RESULT, SUBJECT_PROGRESS):
                await stack.enter_async_context(router.subscribe(subject))
        await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
        with trio.fail_after(WAIT):
            await inbox.receive()
        await client.publish(SUBJECT_RESULT, result("r:a@1"))  # held by the client
        inbox.ack("r:a@1")
        await client.publish(SUBJECT_RESULT, result("r:z@1"))  # held nowhere
        await client.publish(SUBJECT_PROGRESS, progress)
        await router.publish(SUBJECT_RESULT, result("r:y@1"))
        await eventually(lambda: router.held_jobs == 0, "the job acknowledged")
    sent = [result("r:a@1"), result("r:z@1"), progress]
    expected = [decode_packet(encode_packet(p)) for p in sent]
    if company == "alone":
        assert payloads == [p.payload for p in expected]
        assert packets == [decode_packet(encode_packet(result("r:y@1")))]
    else:
        assert payloads == []
        assert packets == [*expected, decode_packet(encode_packet(result("r:y@1")))]


async def test_a_router_subclass_that_changes_listen_takes_no_payloads(url: str) -> None:
    class Watched(NngRouter):
        def listen(self, *args: Any, **kwargs: Any) -> Any:
            return super().listen(*args, **kwargs)

    assert NngRouter.listens_for_payloads and not Watched.listens_for_payloads


@pytest.mark.parametrize("change", ["the listener leaves", "a wildcard subscription",
                                    "a second subscriber", "a second group member"])
async def test_a_change_of_the_results_listeners_between_two_results_reaches_who_it_must(
    url: str, change: str
) -> None:
    """The first result goes to the one listener alone, as a payload; after the change the
    second reaches exactly the listeners there are then: nobody once it left, the listener
    (as a packet) and the new subscriber when one came, one member of the group."""
    payloads: list[object] = []
    packets: list[BusPacket] = []
    others: list[BusPacket] = []
    async with router_and_client(url) as (router, client), AsyncExitStack() as stack:
        listening = AsyncExitStack()
        await listening.enter_async_context(router.listen(
            SUBJECT_RESULT, "engines", packets.append, on_payload=payloads.append))
        await client.publish(SUBJECT_RESULT, result("r:a@1"))
        assert payloads == [result("r:a@1").payload] and packets == []
        newcomer = None
        if change == "the listener leaves":
            await listening.aclose()
        elif change == "a wildcard subscription":
            newcomer = await stack.enter_async_context(router.subscribe("sys.job.>"))
        elif change == "a second subscriber":
            newcomer = await stack.enter_async_context(router.subscribe(SUBJECT_RESULT))
        else:
            await stack.enter_async_context(router.listen(SUBJECT_RESULT, "engines",
                                                          others.append))
        await client.publish(SUBJECT_RESULT, result("r:b@1"))
        second = decode_packet(encode_packet(result("r:b@1")))
        if change == "the listener leaves":
            assert payloads == [result("r:a@1").payload] and packets == []
        elif newcomer is not None:
            assert payloads == [result("r:a@1").payload] and packets == [second]
            assert newcomer.receive_nowait() == second
            with pytest.raises(trio.WouldBlock):
                newcomer.receive_nowait()
        else:  # no longer alone: a packet, to one member of the group
            assert payloads == [result("r:a@1").payload]
            assert [*packets, *others] == [second]
        await listening.aclose()
