"""Job delivery, liveness and slow consumers on the nng bus, over real sockets.

The job-queue contract itself runs in the conformance suite (``nng`` has ``jobs``); here:
what happens when connections drop, go silent or come back stale, workers holding jobs
are killed, and subscribers stop reading. Liveness timeouts are shortened (0.5 s) so that
the real-time waits stay short; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import cbor2
import pynng
import pytest
import trio
from nng_waits import WAIT, eventually

from cordtrio.backends.job_queues import WORKER_LOST
from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.backends.nng import NngBus, open_nng_bus, open_nng_router
from cordtrio.backends.nng.inbox import JobChannel
from cordtrio.backends.nng.testing import paused
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobRequest,
    JobResult,
    JobStatus,
    encode_packet,
)
from cordtrio.worker import Job, open_worker

LIVE = 0.5  # the routers' liveness timeout in these tests
FAST = {"liveness_timeout": LIVE, "heartbeat_interval": 0.1}


def job(job_id: str, topic: str = "job.a") -> BusPacket:
    return BusPacket(trace_id=job_id.rpartition(":")[0], sender_id="test",
                     created_at=datetime(2030, 1, 1, tzinfo=UTC),
                     payload=JobRequest(job_id=job_id, topic=topic))


def job_id_of(packet: BusPacket) -> str:
    assert isinstance(packet.payload, JobRequest | JobResult)
    return packet.payload.job_id


def result(packet: BusPacket) -> JobResult:
    assert isinstance(packet.payload, JobResult)
    return packet.payload




@asynccontextmanager
async def clients(url: str, count: int) -> AsyncIterator[list[NngBus]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            open_nng_bus(url, connect_timeout=WAIT, reconnect_min=0.01, reconnect_max=0.05,
                         heartbeat_interval=0.1))
               for _ in range(count)]


async def receive_raw(sock: Any) -> Any:
    while True:
        try:
            return sock.recv_msg(block=False)
        except pynng.TryAgain:
            await trio.sleep(0.005)


class RawClient:
    """A bare ``pair1`` socket speaking the bus protocol by hand: it never pings, and it
    confirms (credits) frames only when the test reads them."""

    def __init__(self, url: str) -> None:
        self.sock = pynng.Pair1(dial=url, block_on_dial=True)
        self.conn: int | None = None
        self.frames = 0

    def send(self, *ops: dict[str, Any]) -> None:
        self.sock.send(cbor2.dumps(list(ops)))

    async def frame(self) -> list[dict[str, Any]]:
        msg = await receive_raw(self.sock)
        self.frames += 1
        ops: list[dict[str, Any]] = cbor2.loads(msg.bytes)
        for op in ops:
            if op["op"] == "hello":
                self.conn = op["conn"]
        if self.conn is not None:
            self.send({"op": "credit", "conn": self.conn, "n": self.frames})
        return ops

    async def ops_until(self, done: Callable[[list[dict[str, Any]]], bool]
                        ) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with trio.fail_after(WAIT):
            while not done(got):
                got += await self.frame()
        return got

    async def take_jobs(self, cid: int, topics: list[str], cap: int, n: int) -> list[str]:
        """Register as a job consumer and wait for ``n`` jobs."""
        self.send({"op": "jobs", "cid": cid, "topics": topics, "cap": cap})
        ops = await self.ops_until(lambda got: sum(o["op"] == "job" for o in got) >= n)
        return [job_id_of(cbor2_packet(o["packet"])) for o in ops if o["op"] == "job"]

    def close(self) -> None:
        self.sock.close()


def cbor2_packet(wire: bytes) -> BusPacket:
    from cordtrio.protocol import decode_packet

    return decode_packet(wire)


# ------------------------------------------------------------------ redelivery


async def test_jobs_of_a_connection_that_drops_go_to_another_client(url: str) -> None:
    async with (
        open_nng_router(url, **FAST) as router,
        clients(router.urls[0], 1) as (b,),
        b.consume_jobs(["job.a"], capacity=10) as survivor,
    ):
        raw = RawClient(router.urls[0])
        try:
            await raw.ops_until(lambda got: any(o["op"] == "hello" for o in got))
            raw.send({"op": "jobs", "cid": 1, "topics": ["job.a"], "cap": 10})
            await raw.ops_until(lambda got: any(o["op"] == "jobsack" for o in got))
            for i in range(4):
                await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
            ops = await raw.ops_until(lambda got: sum(o["op"] == "job" for o in got) == 2)
            taken = sorted(job_id_of(cbor2_packet(o["packet"])) for o in ops
                           if o["op"] == "job")
        finally:
            raw.close()  # no unjobs, no goodbye: the connection just goes
        with trio.fail_after(WAIT):
            got = sorted([job_id_of(await survivor.receive()) for _ in range(4)])
        assert router.redelivered_jobs == 2 and router.held_jobs == 4
    assert got == [f"r:s{i}@1" for i in range(4)]  # its own two, and the dropped two
    assert len(taken) == 2


async def test_past_the_bound_a_job_whose_workers_keep_dropping_is_reported_lost(
    url: str,
) -> None:
    async with (
        open_nng_router(url, max_redeliveries=1, **FAST) as router,
        clients(router.urls[0], 1) as (engine,),
        engine.subscribe(SUBJECT_RESULT) as results,
    ):
        await engine.publish(SUBJECT_SUBMIT, job("r:s@1"))
        for _ in range(2):  # the first delivery and one redelivery
            raw = RawClient(router.urls[0])
            try:
                assert await raw.take_jobs(1, ["job.a"], 1, 1) == ["r:s@1"]
            finally:
                raw.close()
        with trio.fail_after(WAIT):
            lost = result(await results.receive())
    assert (lost.job_id, lost.status, lost.error_code) == ("r:s@1", JobStatus.FAILED,
                                                           WORKER_LOST)
    assert router.lost_jobs == 1 and router.pending_jobs == router.held_jobs == 0


async def test_a_client_publishing_jobs_waits_while_the_queues_are_full(url: str) -> None:
    async with (
        open_nng_router(url, max_pending=2, **FAST) as router,
        clients(router.urls[0], 2) as (engine, worker),
    ):
        await engine.publish(SUBJECT_SUBMIT, job("r:s0@1"))
        await engine.publish(SUBJECT_SUBMIT, job("r:s1@1"))
        done = trio.Event()

        async def third() -> None:
            await engine.publish(SUBJECT_SUBMIT, job("r:s2@1"))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.sleep(0.2)  # time enough for a puback, were one coming
            assert not done.is_set() and router.pending_jobs == 2
            async with worker.consume_jobs(["job.a"], capacity=1) as inbox:
                with trio.fail_after(WAIT):
                    await done.wait()  # one taken: room for the third
                    got = [job_id_of(await inbox.receive())]
                    inbox.ack(got[0])
                    got.append(job_id_of(await inbox.receive()))
                    inbox.ack(got[1])
                    got.append(job_id_of(await inbox.receive()))
                    inbox.ack(got[2])
    assert got == ["r:s0@1", "r:s1@1", "r:s2@1"]


# ------------------------------------------------------------------ liveness


async def test_a_silent_client_is_cut_off_and_its_jobs_go_to_another(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with (
        open_nng_router(url, **FAST) as router,
        clients(router.urls[0], 1) as (b,),
    ):
        raw = RawClient(router.urls[0])
        try:
            await raw.ops_until(lambda got: any(o["op"] == "hello" for o in got))
            for i in range(3):
                await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
            assert len(await raw.take_jobs(1, ["job.a"], 5, 3)) == 3
            # ...and from now on it says nothing
            async with b.consume_jobs(["job.a"], capacity=5) as survivor:
                with trio.fail_after(WAIT):
                    got = sorted([job_id_of(await survivor.receive()) for _ in range(3)])
                assert router.liveness_cuts == 1 and router.redelivered_jobs == 3
        finally:
            raw.close()
    assert got == ["r:s0@1", "r:s1@1", "r:s2@1"]
    assert sum("heard nothing from it" in r.message for r in caplog.records) == 1


async def test_clients_that_are_idle_but_alive_are_not_cut_off(url: str) -> None:
    async with (
        open_nng_router(url, **FAST) as router,
        clients(router.urls[0], 2) as (a, b),
        a.consume_jobs(["job.a"], capacity=1),
    ):
        await trio.sleep(3 * LIVE)  # nothing to say: only pings go both ways
        assert router.liveness_cuts == 0 and router.peer_count == 2
        assert a.connections == b.connections == 1
        assert a.liveness_resets == b.liveness_resets == 0


async def test_a_stopped_worker_never_starts_the_jobs_taken_from_it(url: str) -> None:
    """A worker process stopped (SIGSTOP) with a job running and two prefetched: the
    router cuts it off, another worker runs all three; when it resumes, its running job is
    cancelled without a result and the prefetched ones are never started."""
    started: list[tuple[str, str]] = []

    def handler(name: str, finish: bool) -> Callable[[Job], Any]:
        async def run(job: Job) -> dict[str, Any]:
            started.append((name, job.request.job_id))
            if not finish:
                await trio.sleep_forever()
            return {}
        return run

    payloads = MemoryPayloadStore()
    async with (
        open_nng_router(url, **FAST) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        clients(router.urls[0], 2) as (a_bus, b_bus),
        open_worker(a_bus, payloads, {"job.a": handler("a", False)}, worker_id="a",
                    max_concurrency=1, prefetch=2) as a,
    ):
        for i in range(3):
            await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
        await eventually(lambda: started == [("a", "r:s0@1")] and router.held_jobs == 3,
                         "worker a to hold all three")
        with paused(a_bus):
            await eventually(lambda: router.liveness_cuts == 1, "the router to cut a off")
            async with open_worker(b_bus, payloads, {"job.a": handler("b", True)},
                                   worker_id="b"):
                with trio.fail_after(WAIT):
                    done = [result(await results.receive()) for _ in range(3)]
                await eventually(lambda: router.held_jobs == router.pending_jobs == 0,
                                 "b's acknowledgements")
        await eventually(lambda: a.lost == 1 and a_bus.connections == 2, "a to come back")
        await eventually(lambda: router.peer_count == 2, "a to register again")
    assert sorted((r.job_id, r.worker_id, r.status) for r in done) == [
        (f"r:s{i}@1", "b", JobStatus.SUCCEEDED) for i in range(3)]
    assert [s for s in started if s[0] == "a"] == [("a", "r:s0@1")]
    assert a.handled == 0  # stopped without a result


async def test_a_client_that_heard_nothing_for_too_long_drops_what_came_meanwhile(
    tmp_path: Any,
) -> None:
    """The gap is checked when frames arrive, before any is delivered: jobs a (fake)
    router sent while this process was not running are never handed out, those received
    before are reported lost, and the client redials."""
    url = f"ipc://{tmp_path}/fake.ipc"
    lost: list[str] = []
    inboxes: list[Any] = []

    async def consume(client: NngBus) -> None:
        async with client.consume_jobs(["job.a"], capacity=5) as inbox:
            inbox.on_lost = lost.append
            inboxes.append(inbox)
            await trio.sleep_forever()

    hello = cbor2.dumps([{"op": "hello", "conn": 1, "proto": 1, "window": 1000, "live": 1.0}])
    with pynng.Pair1(listen=url) as fake:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, fake.send, hello,
                                       abandon_on_cancel=True))  # waits for the dial
            async with open_nng_bus(url, close_timeout=0.1, reconnect_min=0.01,
                                    reconnect_max=0.05) as client:
                nursery.start_soon(consume, client)
                cid = await fake_expects_jobs(fake)
                fake.send(cbor2.dumps([
                    {"op": "jobsack", "cid": cid},
                    {"op": "job", "cid": cid, "packet": encode_packet(job("r:x@1"))},
                ]))
                await eventually(lambda: bool(inboxes), "the consumer")
                inbox = inboxes[0]
                with trio.fail_after(WAIT):
                    assert job_id_of(await inbox.receive()) == "r:x@1"
                with paused(client):
                    fake.send(cbor2.dumps([
                        {"op": "job", "cid": cid, "packet": encode_packet(job("r:y@1"))}]))
                    await trio.sleep(1.5)  # longer than the 1.0 s the router announced
                # it redials and registers its consumer again
                assert await fake_expects_jobs(fake) == cid
                assert client.liveness_resets == 1 and client.connections == 2
                assert lost == ["r:x@1"]
                with pytest.raises(trio.WouldBlock):
                    inbox.receive_nowait()  # r:y@1 never comes out
                nursery.cancel_scope.cancel()


async def fake_expects_jobs(fake: Any) -> int:
    with trio.fail_after(WAIT):
        while True:
            ops = cbor2.loads((await receive_raw(fake)).bytes)
            for op in ops:
                if op["op"] == "jobs":
                    return int(op["cid"])


# ------------------------------------------------------------------ workers


async def test_a_worker_holds_at_most_its_concurrency_plus_prefetch(url: str) -> None:
    release = trio.Event()

    async def slow(job: Job) -> dict[str, Any]:
        await release.wait()
        return {}

    async with (
        open_nng_router(url, **FAST) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        clients(router.urls[0], 1) as (bus,),
        open_worker(bus, MemoryPayloadStore(), {"job.a": slow}, max_concurrency=2,
                    prefetch=1) as worker,
    ):
        for i in range(10):
            await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
        await eventually(lambda: worker.running == 2 and router.held_jobs == 3,
                         "two running, one prefetched")
        await trio.sleep(0.1)  # room for anything more to (wrongly) arrive
        assert (worker.running, router.held_jobs, router.pending_jobs) == (2, 3, 7)
        release.set()
        with trio.fail_after(WAIT):
            done = {result(await results.receive()).job_id for _ in range(10)}
    assert done == {f"r:s{i}@1" for i in range(10)}


WORKER = """
import sys, trio
from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.backends.nng import open_nng_bus
from cordtrio.worker import open_worker

async def slow(job):
    print("started", job.request.job_id, flush=True)
    await trio.sleep_forever()

async def main(url):
    async with open_nng_bus(url, connect_timeout=20) as bus:
        async with open_worker(bus, MemoryPayloadStore(), {"job.a": slow},
                               worker_id="doomed", max_concurrency=1):
            print("ready", flush=True)
            await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


async def test_a_worker_process_killed_mid_job_loses_nothing(url: str) -> None:
    async with (
        open_nng_router(url, **FAST) as router,
        router.subscribe(SUBJECT_RESULT) as results,
    ):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", WORKER, router.urls[0]], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            lines = LineReader(proc.stdout)
            with trio.fail_after(30):  # an interpreter importing cordtrio
                assert await lines.next() == "ready"
            for i in range(3):
                await router.publish(SUBJECT_SUBMIT, job(f"r:s{i}@1"))
            with trio.fail_after(WAIT):
                assert await lines.next() == "started r:s0@1"
            await eventually(lambda: router.held_jobs == 3, "the worker to hold all three")
            os.kill(proc.pid, signal.SIGKILL)
            with trio.fail_after(WAIT):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        async with clients(router.urls[0], 1) as (bus,):
            async def quick(job: Job) -> dict[str, Any]:
                return {}

            async with open_worker(bus, MemoryPayloadStore(), {"job.a": quick},
                                   worker_id="heir"):
                with trio.fail_after(WAIT):
                    done = [result(await results.receive()) for _ in range(3)]
                await eventually(lambda: router.held_jobs == 0, "the acknowledgements")
    assert sorted((r.job_id, r.worker_id, r.status) for r in done) == [
        (f"r:s{i}@1", "heir", JobStatus.SUCCEEDED) for i in range(3)]
    assert router.redelivered_jobs == 3 and router.lost_jobs == 0


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                raise EOFError("the process ended")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()


# ------------------------------------------------------------------ slow subscribers


def big(n: int, size: int) -> BusPacket:
    return BusPacket(trace_id=f"t{n}", sender_id="test",
                     payload=JobResult(job_id=f"r:s@{n}", status=JobStatus.FAILED,
                                       error_message="x" * size))


async def test_a_subscriber_that_never_reads_stalls_nobody_and_is_cut_off(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with (
        open_nng_router(url, slow_consumer_timeout=0.3, **FAST) as router,
        clients(router.urls[0], 3) as (stuck, reader, publisher),
        stuck.subscribe("news", max_buffer=1),  # and never reads
        reader.subscribe("news", max_buffer=1) as news,
    ):
        got: list[str] = []

        async def read() -> None:
            async for packet in news:
                got.append(packet.trace_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(WAIT):  # nobody waits for the stuck one
                for n in range(50):
                    await publisher.publish("news", BusPacket(trace_id=f"t{n}"))
            await eventually(lambda: len(got) == 50, "the reader to get everything")
            await eventually(lambda: router.slow_consumers == 1, "the stuck one to be cut")
            nursery.cancel_scope.cancel()
    assert got == [f"t{n}" for n in range(50)]
    assert any("had no room for" in r.message for r in caplog.records)


async def test_the_router_queues_a_bounded_amount_for_a_client_that_stopped(
    url: str,
) -> None:
    """300 publishes of 1 MB towards a client that stopped reading its socket: the router
    never holds more than ``max_pending_bytes`` (8 MiB) for it, cuts it off, and the
    publisher is never held up."""
    size = 1024 * 1024
    async with (
        open_nng_router(url, liveness_timeout=60) as router,
        router.subscribe("big", max_buffer=1) as local,
    ):
        raw = RawClient(router.urls[0])
        try:
            await raw.ops_until(lambda got: any(o["op"] == "hello" for o in got))
            raw.send({"op": "sub", "sid": 1, "subject": "big", "queue": "", "room": 1024})
            await raw.ops_until(lambda got: any(o["op"] == "suback" for o in got))
            peak = 0
            got = 0
            with trio.fail_after(60):
                for n in range(300):
                    await router.publish("big", big(n, size))
                    peak = max(peak, router.queued_bytes)
                    got += len(local.receive_nowait().payload.error_message)  # type: ignore[union-attr]
        finally:
            raw.close()
    assert got == 300 * size
    assert peak <= router.max_pending_bytes == 8 * 1024 * 1024
    assert router.slow_consumers == 1


# ------------------------------------------------------------------ a result acknowledges


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


def test_a_job_acknowledged_before_its_result_goes_out_is_acknowledged_on_its_own() -> None:
    """``ack`` while the result's ``pub`` waits to be written: the ``pub`` no longer
    carries the acknowledgement, so ``ack`` sends it; once the ``pub`` carries it, ``ack``
    sends nothing."""
    channel = JobChannel(1, frozenset({"job.a"}), 2)
    sent: list[str] = []
    channel.on_ack = sent.append
    for n in ("a", "b"):
        channel.put(n, job(f"r:{n}@1"))
        channel.receive_nowait()
    assert channel.ride("a") and channel.ride("b")
    channel.ack("a")  # before its pub was written
    assert sent == ["a"] and not channel.carry("a") and channel.held == 1
    assert channel.carry("b")  # its pub carries the acknowledgement
    channel.ack("b")
    assert sent == ["a"] and channel.held == 0
