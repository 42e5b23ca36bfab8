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
from collections.abc import Callable
from functools import partial
from typing import Any

import cbor2
import pynng
import pytest
import trio
from nng_job_clients import (
    FAST,
    LIVE,
    RawClient,
    cbor2_packet,
    clients,
    job,
    job_id_of,
    result,
)
from nng_waits import WAIT, eventually, receive_raw

from cordtrio.backends.job_queues import WORKER_LOST
from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.backends.nng import NngBus, open_nng_bus, open_nng_router
from cordtrio.backends.nng.testing import paused
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobResult,
    JobStatus,
    encode_packet,
)
from cordtrio.worker import Job, open_worker

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
                # redialled (on a loaded machine the fake pair socket may drop the first
                # redial as well: the count of connections is at least two, not exactly)
                assert client.liveness_resets == 1 and client.connections >= 2
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
