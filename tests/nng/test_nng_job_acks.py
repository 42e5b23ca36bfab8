"""A worker's result acknowledges its job on the nng bus: the ``ack`` riding with the
result's ``pub``, checked by the router, and the client's bookkeeping of it."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from nng_job_clients import FAST, RawClient, clients, job, job_id_of, result
from nng_waits import WAIT, eventually

from cordtrio.backends.nng import open_nng_bus, open_nng_router
from cordtrio.backends.nng.inbox import JobChannel
from cordtrio.backends.nng.testing import paused
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobResult,
    JobStatus,
    encode_packet,
)


def done(job_id: str) -> BusPacket:
    return BusPacket(trace_id="r", sender_id="w", created_at=datetime(2030, 1, 1, tzinfo=UTC),
                     payload=JobResult(job_id=job_id, status=JobStatus.SUCCEEDED))


async def test_the_result_of_a_held_job_acknowledges_it_once_handed_out(url: str) -> None:
    """The holder's ``pub`` of a result carries the job's acknowledgement: when its publish
    returns the router has forgotten the job and filled the slot; ``ack`` sends nothing."""
    async with (
        open_nng_router(url, **FAST) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        clients(router.urls[0], 1) as (bus,),
        bus.consume_jobs(["job.a"], capacity=1) as inbox,
    ):
        for i in range(2):
            await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
        with trio.fail_after(WAIT):
            assert job_id_of(await inbox.receive()) == "r:s0@1"
        await bus.publish(SUBJECT_RESULT, done("r:s0@1"))
        assert router.jobs.get("r:s0@1") is None  # acknowledged before the puback left
        assert result(results.receive_nowait()).job_id == "r:s0@1"
        with trio.fail_after(WAIT):  # the freed slot took the next job, no ack called yet
            assert job_id_of(await inbox.receive()) == "r:s1@1"
        inbox.ack("r:s0@1")  # nothing left to acknowledge
        assert inbox.held == 1 and router.held_jobs == 1
        await bus.publish(SUBJECT_RESULT, done("r:s9@1"))  # not a job of ours: no ack
        inbox.ack("r:s1@1")  # received, its result never published: acknowledged by op
        await eventually(lambda: router.held_jobs == 0, "the ack op")
        assert inbox.held == 0


async def test_an_ack_on_a_raw_pub_is_checked_and_only_for_the_holders_result(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with open_nng_router(url, **FAST) as router:
        raw = RawClient(router.urls[0])
        try:
            await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
            await router.publish(SUBJECT_SUBMIT, job("r:b@1"))
            assert sorted(await raw.take_jobs(7, ["job.a"], 2, 2)) == ["r:a@1", "r:b@1"]
            pub = {"op": "pub", "subject": SUBJECT_RESULT, "jid": "r:a@1"}
            raw.send({**pub, "pid": 1, "packet": encode_packet(done("r:a@1")), "ack": "7"})
            raw.send({**pub, "pid": 2, "packet": encode_packet(done("r:a@1")), "ack": 8})
            raw.send({**pub, "pid": 3, "packet": encode_packet(done("r:a@1")), "ack": 7})
            acks = await raw.ops_until(lambda got: sum(o["op"] == "puback" for o in got) >= 2)
            assert [o["pid"] for o in acks if o["op"] == "puback"] == [2, 3]  # 1: malformed
            assert router.dropped_frames == 1
            assert router.jobs.get("r:a@1") is None  # consumer 8 is no consumer: pid 3 did
            assert router.jobs.get("r:b@1") is not None and router.held_jobs == 1
        finally:
            raw.close()


def test_a_job_channel_takes_an_acknowledgement_riding_back_when_its_result_fails() -> None:
    channel = JobChannel(1, frozenset({"job.a"}), 2)
    sent: list[str] = []
    lost: list[str] = []
    channel.on_ack, channel.on_lost = sent.append, lost.append
    for n in ("a", "b"):
        channel.put(n, job(f"r:{n}@1"))
        channel.receive_nowait()
    assert not channel.ride("r:zz@1")  # never received here
    assert channel.ride("a") and channel.riding("a") and channel.held == 2
    channel.unride("a")  # refused or given up: received and unacknowledged again
    assert not channel.riding("a")
    channel.ack("a")
    assert sent == ["a"]
    assert channel.ride("b")
    assert channel.reset() == ["b"] and lost == ["b"]  # its result may not have gone out
    assert channel.held == 0 and not channel.riding("b")


def test_a_job_taken_from_ready_is_received_and_a_buffered_one_is_not_lost() -> None:
    """A reader may take a job with ``ready.popleft()`` (a worker's slot) as with
    ``receive_nowait``: received from then on (acknowledged, riding, lost on a reset);
    one still buffered at a reset is forgotten, not lost (it never started)."""
    channel = JobChannel(1, frozenset({"job.a"}), 4)
    sent: list[str] = []
    lost: list[str] = []
    channel.on_ack, channel.on_lost = sent.append, lost.append
    for n in ("a", "b", "c", "d"):
        channel.put(f"r:{n}@1", job(f"r:{n}@1"))
    assert channel.buffered == 4 and channel.held == 4
    assert channel.ready.popleft().payload.job_id == "r:a@1"
    assert channel.receive_nowait().payload.job_id == "r:b@1"
    assert channel.ready.popleft().payload.job_id == "r:c@1"
    channel.ack("r:a@1")
    assert sent == ["r:a@1"] and channel.held == 3
    assert channel.ride("r:b@1")
    assert channel.reset() == ["r:b@1", "r:c@1"] and lost == ["r:b@1", "r:c@1"]
    assert channel.buffered == 0 and channel.held == 0


def _two_jobs_received() -> tuple[JobChannel, list[str]]:
    """A job channel that received jobs ``a`` and ``b`` (held), and the acks it sends."""
    channel = JobChannel(1, frozenset({"job.a"}), 2)
    sent: list[str] = []
    channel.on_ack = sent.append
    for n in ("a", "b"):
        channel.put(n, job(f"r:{n}@1"))
        channel.receive_nowait()
    return channel, sent


def test_a_job_acknowledged_before_its_result_goes_out_is_acknowledged_on_its_own() -> None:
    """``ack`` while the result's ``pub`` waits to be written: the ``pub`` no longer
    carries the acknowledgement, so ``ack`` sends it; once the ``pub`` carries it, ``ack``
    sends nothing."""
    channel, sent = _two_jobs_received()
    assert channel.ride("a") and channel.ride("b")
    channel.ack("a")  # before its pub was written
    assert sent == ["a"] and not channel.carry("a") and channel.held == 1
    assert channel.carry("b")  # its pub carries the acknowledgement
    channel.ack("b")
    assert sent == ["a"] and channel.held == 0


def test_a_result_queued_without_waiting_keeps_its_job_until_it_has_landed() -> None:
    """``ride(queued=True)`` (``NngBus.publish_now``): the worker's ``ack`` right after
    sends nothing and keeps the job riding, so its ``pub`` still carries the
    acknowledgement when written; ``landed`` forgets it, ``unride`` (refused) makes it
    received and unacknowledged again."""
    channel, sent = _two_jobs_received()
    assert channel.ride("a", True) and channel.ride("b", True)
    channel.ack("a")
    channel.ack("b")
    assert sent == [] and channel.held == 2
    assert channel.carry("a") and channel.carry("b")
    channel.landed("a")
    channel.unride("b")
    assert channel.held == 1 and not channel.riding("a") and not channel.riding("b")
    channel.ack("b")
    assert sent == ["b"] and channel.held == 0


async def test_publish_now_queues_a_workers_result_and_the_router_acknowledges_it(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A result for a job received here is queued with its acknowledgement and the call
    returns at once; anything else is left to ``publish`` (False). A result the router
    refuses is logged and its job is unacknowledged again."""
    caplog.set_level(logging.ERROR, logger="cordtrio.bus.nng")
    async with (
        open_nng_router(url, **FAST) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        clients(router.urls[0], 2) as (bus, other),
        bus.consume_jobs(["job.a"], capacity=2) as inbox,
        other.consume_jobs(["job.b"], capacity=1) as other_inbox,
    ):
        assert bus.publishes_now
        await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
        await router.publish(SUBJECT_SUBMIT, job("r:b@1", "job.b"))
        with trio.fail_after(WAIT):
            assert job_id_of(await inbox.receive()) == "r:a@1"
            assert job_id_of(await other_inbox.receive()) == "r:b@1"
        assert not bus.publish_now(SUBJECT_RESULT, done("r:zz@1"))  # not received here
        assert not bus.publish_now(SUBJECT_SUBMIT, job("r:c@1"))
        assert bus.publish_now(SUBJECT_RESULT, done("r:a@1"))
        inbox.ack("r:a@1")  # sends nothing: the result carries it
        with trio.fail_after(WAIT):
            assert result(await results.receive()).job_id == "r:a@1"
        await eventually(lambda: router.jobs.get("r:a@1") is None, "the riding ack")
        await eventually(lambda: inbox.held == 0, "the puback")
        assert router.held_jobs == 1
        # held by ``other``: refused by the holder rule (the job is ``bus``'s: pretend)
        inbox.put("r:b@1", job("r:b@1", "job.b"))
        inbox.receive_nowait()
        assert bus.publish_now(SUBJECT_RESULT, done("r:b@1"))
        inbox.ack("r:b@1")
        await eventually(lambda: "was not published" in caplog.text, "the refusal logged")
        assert inbox.held == 1 and router.held_jobs == 1  # received, unacknowledged again
        assert router.forbidden_ops == 1


async def test_a_queued_result_still_unconfirmed_when_the_bus_closes_gives_its_job_back(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The router waits for room before it confirms the result; the bus closes first: the
    job is received and unacknowledged again (no longer riding) and the loss is logged."""
    caplog.set_level(logging.ERROR, logger="cordtrio.bus.nng")
    async with (
        open_nng_router(url) as router,
        router.subscribe(SUBJECT_RESULT, max_buffer=1) as results,
        AsyncExitStack() as consumers,
    ):
        async with AsyncExitStack() as buses:  # left before the consumer's block is
            (bus,) = await buses.enter_async_context(clients(router.urls[0], 1))
            inbox = await consumers.enter_async_context(
                bus.consume_jobs(["job.a"], capacity=1))
            await router.publish(SUBJECT_RESULT, done("r:x@1"))  # the room is taken
            await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
            with trio.fail_after(WAIT):
                assert job_id_of(await inbox.receive()) == "r:a@1"
            assert bus.publish_now(SUBJECT_RESULT, done("r:a@1"))
            inbox.ack("r:a@1")  # sends nothing: the result carries it
            assert inbox.riding("r:a@1")
        assert not inbox.riding("r:a@1") and inbox.held == 1
        assert "the result of job r:a@1 was not published: the nng bus was closed" \
            in caplog.text
        await eventually(lambda: router.pending_jobs == 1, "the job back in its queue")
        assert result(results.receive_nowait()).job_id == "r:x@1"


async def test_a_queued_result_resent_after_a_reset_no_longer_carries_its_acknowledgement(
    url: str,
) -> None:
    """The connection drops before the result's ``pub`` is written: the router took the
    job back (the worker is told it is lost) and hands it out again; the ``pub`` re-sent on
    the new connection goes without the ``ack`` (the job no longer rides), so the result
    is published and the job handed out again stays unacknowledged."""
    lost: list[str] = []
    written: list[dict[str, Any]] = []
    async with (
        open_nng_router(url) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        clients(router.urls[0], 1) as (bus,),
        bus.consume_jobs(["job.a"], capacity=1) as inbox,
    ):
        inbox.on_lost = lost.append
        resolve = bus._pubsub.resolve

        def recorded(item: Any) -> Any:
            op = resolve(item)
            if op is not None and op["op"] == "pub":
                written.append(op)
            return op

        bus._pubsub.resolve = recorded  # type: ignore[method-assign]
        await router.publish(SUBJECT_SUBMIT, job("r:a@1"))
        with trio.fail_after(WAIT):
            assert job_id_of(await inbox.receive()) == "r:a@1"
        with paused(bus):  # nothing is written
            assert bus.publish_now(SUBJECT_RESULT, done("r:a@1"))
            inbox.ack("r:a@1")
            for peer in tuple(router._peers.values()):
                peer.pipe.close()  # the network drops the connection
            await eventually(lambda: lost == ["r:a@1"] and bus.connections == 2
                             and router.pending_jobs == 1, "the reset and the redial")
        assert not inbox.riding("r:a@1") and written == []
        with trio.fail_after(WAIT):
            assert result(await results.receive()).job_id == "r:a@1"
            assert job_id_of(await inbox.receive()) == "r:a@1"  # handed out again
        await eventually(lambda: not bus._pubsub.pubs, "the puback")
        assert [op["jid"] for op in written] == ["r:a@1"] and "ack" not in written[0]
        assert router.jobs.get("r:a@1") is not None and router.held_jobs == 1
        assert inbox.held == 1


async def test_publish_now_does_nothing_with_every_in_flight_slot_taken(url: str) -> None:
    async with (
        open_nng_router(url) as router,
        router.subscribe(SUBJECT_RESULT, max_buffer=0) as results,
        open_nng_bus(router.urls[0], connect_timeout=WAIT, max_in_flight=1) as bus,
        bus.consume_jobs(["job.a"], capacity=2) as inbox,
    ):
        for n in ("a", "b"):
            await router.publish(SUBJECT_SUBMIT, job(f"r:{n}@1"))
            with trio.fail_after(WAIT):
                assert job_id_of(await inbox.receive()) == f"r:{n}@1"
        assert bus.publish_now(SUBJECT_RESULT, done("r:a@1"))  # waits for room: no puback
        assert not bus.publish_now(SUBJECT_RESULT, done("r:b@1"))
        assert not inbox.riding("r:b@1") and inbox.held == 2 and len(bus._pubsub.pubs) == 1
        with trio.fail_after(WAIT):
            assert result(await results.receive()).job_id == "r:a@1"
        await eventually(lambda: not bus._pubsub.pubs, "the puback freeing the slot")
        assert bus.publish_now(SUBJECT_RESULT, done("r:b@1"))
        with trio.fail_after(WAIT):
            assert result(await results.receive()).job_id == "r:b@1"
        await eventually(lambda: router.held_jobs == 0, "both jobs acknowledged")
