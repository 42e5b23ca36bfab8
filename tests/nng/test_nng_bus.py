"""The nng bus over real sockets: several client connections, router restarts, garbage on
the wire, and the engine with workers on it. (The Bus contract itself is checked by the
conformance suite, which has an ``nng`` entry.)

Everything runs on Trio's real clock; every wait is bounded by ``trio.fail_after``. The
only real-time waits are bounded polls for a reconnection (``eventually``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import cbor2
import pynng
import pytest
import trio
import trio.testing
from nng_waits import WAIT, eventually, receive_raw

from cordtrio.backends.memory import MemoryPayloadStore, MemoryStore
from cordtrio.backends.nng import (
    NngBus,
    NngRouter,
    open_nng_bus,
    open_nng_router,
)
from cordtrio.engine import open_engine
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.model import RunStatus, Step, Workflow
from cordtrio.ports import Bus
from cordtrio.protocol import (
    BusPacket,
    JobResult,
    JobStatus,
    encode_packet,
)
from cordtrio.worker import Job, open_worker


def packet(n: int, sender: str = "test") -> BusPacket:
    return BusPacket(trace_id=f"t{n}", sender_id=sender,
                     payload=JobResult(job_id=f"run:step@{n}", status=JobStatus.SUCCEEDED))


def traces(packets: list[BusPacket]) -> list[str]:
    return [p.trace_id for p in packets]


async def take(channel: trio.abc.ReceiveChannel[BusPacket], count: int) -> list[BusPacket]:
    with trio.fail_after(WAIT):
        return [await channel.receive() for _ in range(count)]


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="cordtrio-nng-test-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["tcp", "ipc"])
def address(request: pytest.FixtureRequest, ipc_dir: str) -> str:
    """Where the router listens: ``tcp://127.0.0.1:0`` (nng picks the port) or ipc."""
    return "tcp://127.0.0.1:0" if request.param == "tcp" else f"ipc://{ipc_dir}/bus.ipc"


@asynccontextmanager
async def clients(url: str, count: int) -> AsyncIterator[list[NngBus]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_nng_bus(url, connect_timeout=WAIT))
               for _ in range(count)]


# ------------------------------------------------------------------ across connections


async def test_fan_out_and_one_of_n_across_client_connections(address: str) -> None:
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 3) as (a, b, pub),
        AsyncExitStack() as stack,
    ):
        plain = [await stack.enter_async_context(c.subscribe("jobs")) for c in (a, b)]
        group = [await stack.enter_async_context(c.subscribe("jobs", queue="w"))
                 for c in (a, b)]
        local = await stack.enter_async_context(router.subscribe("jobs"))
        for n in range(20):
            await pub.publish("jobs", packet(n))
        expected = [f"t{n}" for n in range(20)]
        for channel in (*plain, local):  # every plain subscriber: all of them, in order
            assert traces(await take(channel, 20)) == expected
        per_member: list[list[str]] = [[], []]
        with trio.fail_after(WAIT):
            while sum(map(len, per_member)) < 20:
                for got, member in zip(per_member, group, strict=True):
                    got.extend(traces(drain(member)))
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert drain(group[0]) == drain(group[1]) == []
    assert Counter(t for got in per_member for t in got) == Counter(expected)
    assert all(per_member), per_member  # round robin over both connections


def drain(channel: trio.abc.ReceiveChannel[BusPacket]) -> list[BusPacket]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return out


async def test_the_router_is_a_bus_for_its_own_process(address: str) -> None:
    async with open_nng_router(address) as router, clients(router.urls[0], 1) as (client,):
        assert all(isinstance(bus, Bus) for bus in (router, client))
        async with router.subscribe("up") as up, client.subscribe("down") as down:
            await router.publish("down", packet(1))
            await client.publish("up", packet(2))
            assert traces(await take(down, 1)) == ["t1"]
            assert traces(await take(up, 1)) == ["t2"]
        assert router.peer_count == 1


async def test_a_slow_subscriber_on_another_connection_loses_nothing(address: str) -> None:
    """Bounded buffer, backpressure instead of drops: 200 packets through max_buffer=1."""
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 2) as (a, b),
        b.subscribe("slow", max_buffer=1) as slow,
    ):
        got: list[str] = []

        async def consume() -> None:
            for _ in range(200):
                got.append((await slow.receive()).trace_id)
                await trio.sleep(0)

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for n in range(200):
                    await a.publish("slow", packet(n))
    assert got == [f"t{n}" for n in range(200)]


async def test_a_group_member_that_leaves_hands_what_it_had_not_read_to_the_others(
    address: str,
) -> None:
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 3) as (a, b, pub),
        a.subscribe("q", queue="w") as stays,
    ):
        async with b.subscribe("q", queue="w"):
            for n in range(4):
                await pub.publish("q", packet(n))  # two of them wait unread in b's buffer
        for n in range(4, 6):
            await pub.publish("q", packet(n))
        got = await take(stays, 6)
        assert sorted(traces(got)) == [f"t{n}" for n in range(6)]  # nothing lost


async def test_a_member_that_stops_reading_does_not_stall_its_group(address: str) -> None:
    """Members get packets only while they have room: a stuck one (a frozen process looks
    the same to the router) gets its buffer's worth and is then passed over."""
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 3) as (a, b, pub),
        a.subscribe("q", queue="w", max_buffer=2) as stuck,
        b.subscribe("q", queue="w") as live,
    ):
        with trio.fail_after(WAIT):
            for n in range(20):
                await pub.publish("q", packet(n))
        got = traces(await take(stuck, 2)) + traces(await take(live, 18))
        assert sorted(got) == sorted(f"t{n}" for n in range(20))


async def test_a_client_leaving_hands_its_unread_group_packets_back(address: str) -> None:
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 2) as (a, pub),
        a.subscribe("q", queue="w") as stays,
    ):
        async with (
            open_nng_bus(router.urls[0]) as leaving,
            leaving.subscribe("q", queue="w") as unread,
        ):
            for n in range(10):
                await pub.publish("q", packet(n))
            await eventually(lambda: unread.buffered == 5, "round robin to fill it")
        got = await take(stays, 10)  # its unread half came back to the group
        assert sorted(traces(got)) == sorted(f"t{n}" for n in range(10))


async def test_wildcards_work_across_connections(address: str) -> None:
    async with (
        open_nng_router(address) as router,
        clients(router.urls[0], 2) as (a, b),
        a.subscribe("sys.job.>") as jobs,
    ):
        for subject in ("sys.job.submit", "sys.job", "sys.heartbeat", "sys.job.x.y",
                        "sys.job.end"):
            await b.publish(subject, packet(0, subject))
        got = await take(jobs, 3)  # in publish order: the last one proves none is missing
        assert [p.sender_id for p in got] == ["sys.job.submit", "sys.job.x.y", "sys.job.end"]


# ------------------------------------------------------------------ reconnection


async def test_a_client_reconnects_after_the_router_restarts(address: str) -> None:
    async with trio.open_nursery() as nursery:
        crash = trio.CancelScope()
        first: NngRouter = await nursery.start(run_router, address, crash)
        url = first.urls[0]  # the concrete port, reused by the second router
        async with (
            open_nng_bus(url, reconnect_min=0.01, reconnect_max=0.05) as client,
            client.subscribe("news") as news,
            client.subscribe("work", queue="w") as work,
        ):
            assert first.subscription_count == 2
            await first.publish("news", packet(1))
            assert traces(await take(news, 1)) == ["t1"]
            connections = client.connections
            crash.cancel()  # the router goes away...
            await eventually(lambda: not client.connected, "the client to notice")
            async with open_nng_router(url) as second:  # ...and comes back
                await eventually(lambda: second.subscription_count == 2,
                                 "the subscriptions to be registered again")
                assert client.connections == connections + 1
                await second.publish("news", packet(2))
                await second.publish("work", packet(3))
                assert traces(await take(news, 1)) == ["t2"]
                assert traces(await take(work, 1)) == ["t3"]


async def run_router(
    address: str, scope: trio.CancelScope, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a router until ``scope`` is cancelled (a router process stopping)."""
    with scope:
        async with open_nng_router(address) as router:
            task_status.started(router)
            await trio.sleep_forever()


async def test_a_dropped_connection_to_a_live_router_is_restored(address: str) -> None:
    async with (
        open_nng_router(address) as router,
        open_nng_bus(router.urls[0], reconnect_min=0.01, reconnect_max=0.05) as client,
        client.subscribe("s", max_buffer=2) as sub,
    ):
        await router.publish("s", packet(0))
        assert traces(await take(sub, 1)) == ["t0"]
        connections = client.connections
        for peer in tuple(router._peers.values()):
            peer.pipe.close()  # the network drops the connection
        await eventually(lambda: client.connections == connections + 1
                         and router.subscription_count == 1, "the reconnection")
        got: list[str] = []

        async def consume() -> None:
            for _ in range(50):
                got.append((await sub.receive()).trace_id)

        with trio.fail_after(WAIT):  # the room accounting starts afresh: no stall, no loss
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for n in range(1, 51):
                    await router.publish("s", packet(n))
        assert got == [f"t{n}" for n in range(1, 51)]


async def test_a_publish_made_while_the_router_is_down_is_delivered_when_it_is_back(
    ipc_dir: str,
) -> None:
    url = f"ipc://{ipc_dir}/later.ipc"
    async with open_nng_bus(url, connect_timeout=None, reconnect_min=0.01,
                            reconnect_max=0.05) as client:
        done = trio.Event()

        async def publish() -> None:
            await client.publish("later", packet(7))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set() and not client.connected  # waiting for a router
            async with open_nng_router(url) as router, router.subscribe("later") as later:
                got = await take(later, 1)
                with trio.fail_after(WAIT):
                    await done.wait()
    assert traces(got) == ["t7"]


async def test_no_router_within_the_connect_timeout_is_an_error_naming_it(ipc_dir: str) -> None:
    url = f"ipc://{ipc_dir}/nobody.ipc"
    with pytest.raises(CordtrioError, match=r"nobody\.ipc"):
        async with open_nng_bus(url, connect_timeout=0.1):
            pass


async def test_bad_addresses_are_errors_naming_them() -> None:
    with pytest.raises(CordtrioError, match="bogus"):
        async with open_nng_router("bogus://x"):
            pass
    with pytest.raises(CordtrioError, match="bogus"):
        async with open_nng_bus("bogus://x"):
            pass


async def test_closing_a_client_ends_its_subscriptions_and_publishes(ipc_dir: str) -> None:
    async with open_nng_router(f"ipc://{ipc_dir}/c.ipc") as router:
        async with open_nng_bus(router.urls[0]) as client, client.subscribe("s") as sub:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await sub.receive()
        with pytest.raises(trio.ClosedResourceError):
            await client.publish("s", packet(1))
        await eventually(lambda: router.subscription_count == 0, "the router to forget it")


async def test_publishing_what_is_not_a_packet_is_a_protocol_error(ipc_dir: str) -> None:
    async with open_nng_router(f"ipc://{ipc_dir}/p.ipc") as router, \
            clients(router.urls[0], 1) as (client,):
        for bus in (router, client):
            with pytest.raises(ProtocolError, match=r"subject\.x"):
                await bus.publish("subject.x", {"job_id": "x"})  # type: ignore[arg-type]


# ------------------------------------------------------------------ garbage on the wire


def random_frames(seed: int, count: int = 40) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([1, 3, 17, 200, 5000])) for _ in range(count)]


FOREIGN_CBOR: list[Any] = [
    {"hello": "world"},
    [1, 2, 3],
    [{"op": 7}],
    [{"op": "nope"}],
    [{"op": "sub", "sid": "one", "subject": "s"}],
    [{"op": "sub", "sid": 1, "subject": ""}],
    [{"op": "pub", "pid": 1, "subject": "s"}],
    [{"op": "pub", "pid": 1, "subject": "s", "packet": b"\x01not a map"}],
    [{"op": "ack", "did": 1, "r": 9}],
    [{"op": "credit", "conn": True, "n": 1}],
    [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]],
    "just a string",
]


async def test_garbage_sent_to_the_router_is_logged_and_dropped(
    ipc_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with open_nng_router(f"ipc://{ipc_dir}/g.ipc") as router, \
            clients(router.urls[0], 2) as (a, b):
        url = router.urls[0]
        async with a.subscribe("s") as sub:
            with pynng.Pair1(dial=url, block_on_dial=True) as raw:
                frames = random_frames(1) + [cbor2.dumps(x) for x in FOREIGN_CBOR]
                for frame in frames:
                    raw.send(frame)
                # A well-formed publish of a packet that does not decode: dropped at the
                # subscriber's end, which logs it.
                bad_packet = cbor2.dumps({"trace_id": 5, "job_result": "?"})
                raw.send(cbor2.dumps([{"op": "pub", "pid": 99, "subject": "s",
                                       "packet": bad_packet}]))
                await eventually(lambda: router.dropped_frames >= len(frames) - 1
                                 and a.dropped_frames >= 1, "the garbage to be dropped")
                # the bus still works, for everybody
                await b.publish("s", packet(1))
                assert traces(await take(sub, 1)) == ["t1"]
                assert drain(sub) == []
    assert "dropped a malformed" in caplog.text


async def test_random_bytes_on_the_tcp_port_do_not_hurt_the_router() -> None:
    """Not even the nng handshake (and one with a wrong protocol): nng refuses those
    connections; the bus carries on."""
    async with (
        open_nng_router("tcp://127.0.0.1:0") as router,
        clients(router.urls[0], 2) as (a, b),
        a.subscribe("s") as sub,
    ):
        host, port = router.urls[0].removeprefix("tcp://").rsplit(":", 1)
        streams = []
        for data in [*random_frames(3, count=5), b"\x00SP\x00\x00\x10\x00\x00" + bytes(64)]:
            stream = await trio.open_tcp_stream(host, int(port))
            streams.append(stream)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
        await b.publish("s", packet(1))
        assert traces(await take(sub, 1)) == ["t1"]
        assert router.peer_count == 2
        for stream in streams:
            await stream.aclose()


async def test_garbage_sent_to_a_client_is_logged_and_dropped(
    ipc_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fake router (a raw pair1 socket, which queues rather than drops what it sends)
    answers a client with garbage, then with the real thing: the client drops the
    garbage and still delivers."""
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    url = f"ipc://{ipc_dir}/fake.ipc"
    with pynng.Pair1(listen=url) as fake:
        hello = cbor2.dumps([{"op": "hello", "conn": 1, "proto": 1, "window": 1000}])
        async with trio.open_nursery() as greeter:  # (the send waits for the client's dial)
            greeter.start_soon(partial(trio.to_thread.run_sync, fake.send, hello,
                                       abandon_on_cancel=True))
            async with (
                open_nng_bus(url, close_timeout=0.1) as client,  # the fake never says bye
                trio.open_nursery() as nursery,
            ):
                subscribed: list[trio.abc.ReceiveChannel[BusPacket]] = []
                ready = trio.Event()

                async def subscriber() -> None:
                    async with client.subscribe("s") as channel:
                        subscribed.append(channel)
                        ready.set()
                        await trio.sleep_forever()

                nursery.start_soon(subscriber)
                with trio.fail_after(WAIT):
                    frame = await receive_raw(fake)
                ops = cbor2.loads(frame.bytes)
                sid, room = next((op["sid"], op["room"]) for op in ops if op["op"] == "sub")
                assert room == 1024  # the subscriber's buffer
                garbage = random_frames(2) + [cbor2.dumps(x) for x in FOREIGN_CBOR] + [
                    cbor2.dumps([{"op": "msg", "sid": sid,
                                  "packet": cbor2.dumps({"trace_id": 5})}]),
                    cbor2.dumps([{"op": "puback", "pid": "x"}]),
                ]
                for data in garbage:
                    fake.send(data)
                fake.send(cbor2.dumps([
                    {"op": "hello", "conn": 1, "proto": 1, "window": 1000},
                    {"op": "suback", "sid": sid},
                    {"op": "msg", "sid": sid, "packet": encode_packet(packet(3))},
                ]))
                with trio.fail_after(WAIT):
                    await ready.wait()
                assert traces(await take(subscribed[0], 1)) == ["t3"]
                # Both packets are consumed (the undecodable one dropped and logged): the
                # client gives their room back.
                returned = 0
                with trio.fail_after(WAIT):
                    while returned < 2:
                        frame = cbor2.loads((await receive_raw(fake)).bytes)
                        returned += sum(op["n"] for op in frame
                                        if op["op"] == "room" and op["sid"] == sid)
                assert returned == 2
                assert client.dropped_frames >= len(garbage) - 1
                nursery.cancel_scope.cancel()
    assert "dropped a malformed" in caplog.text


# ------------------------------------------------------------------ the engine on nng


@pytest.mark.parametrize("engine_on", ["client", "router"])
async def test_an_engine_and_workers_on_their_own_connections_run_a_fan_out(
    address: str, engine_on: str
) -> None:
    """Engine and two workers, each on its own connection (or the engine in the router's
    process, using the router as its bus)."""
    store, payloads = MemoryStore(), MemoryPayloadStore()
    await store.save_workflow(Workflow(id="wf", org_id="o", steps={
        "split": Step(id="split", topic="job.split", input={"n": "${input.n}"}),
        "each": Step(id="each", topic="job.square", depends_on=["split"],
                     for_each="steps.split.output.items", max_parallel=4),
        "sum": Step(id="sum", topic="job.sum", depends_on=["each"],
                    input={"values": "${steps.each.output}"}),
    }))

    async def split(job: Job) -> dict[str, Any]:
        return {"items": list(range(int(job.input["n"])))}

    async def square(job: Job) -> dict[str, Any]:
        return {"square": job.item * job.item}

    async def total(job: Job) -> dict[str, Any]:
        return {"total": sum(v["square"] for v in job.input["values"])}

    handlers = {"job.split": split, "job.square": square, "job.sum": total}
    async with open_nng_router(address) as router, clients(router.urls[0], 3) as (
        engine_bus, worker_bus, other_worker_bus
    ):
        bus = router if engine_on == "router" else engine_bus
        with trio.fail_after(30):
            async with open_engine(store, bus, payloads=payloads) as engine, \
                    open_worker(worker_bus, payloads, handlers, worker_id="w1") as w1, \
                    open_worker(other_worker_bus, payloads, handlers, worker_id="w2") as w2:
                run_id = await engine.submit("wf", {"n": 10})
                run = await engine.wait_run(run_id)
                # job requests handed over at once in the router's process; a client
                # connection refuses them all, so its engine does not try (it awaits)
                wiring = engine._wiring
                assert wiring is not None
                assert (wiring.submit_now is not None) == (engine_on == "router")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.context["steps"]["sum"]["output"] == {"total": sum(i * i for i in range(10))}
    assert w1.handled + w2.handled == 12
    assert w1.handled and w2.handled  # both connections took a share


async def test_a_client_has_at_most_max_in_flight_publishes_waiting_for_the_router(
    ipc_dir: str,
) -> None:
    """A free slot is taken at once, a publish past the bound waits for one; all arrive."""
    async with open_nng_router(f"ipc://{ipc_dir}/bus.ipc") as router, \
            router.subscribe("s", max_buffer=0) as slow, \
            open_nng_bus(router.urls[0], connect_timeout=WAIT, max_in_flight=2) as client, \
            trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(client.publish, "s", packet(n))
        await trio.testing.wait_all_tasks_blocked()  # on their slot or their puback
        assert len(client._pubsub.pubs) == 2
        got = [await slow.receive() for _ in range(5)]
    assert sorted(traces(got)) == [f"t{n}" for n in range(5)]
