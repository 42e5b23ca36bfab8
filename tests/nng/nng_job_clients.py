"""What the nng job tests share: job packets, real clients dialled into a router, and a
bare socket speaking the bus protocol by hand (``RawClient``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import cbor2
import pynng
import trio
from nng_waits import WAIT, receive_raw

from cordtrio.backends.nng import NngBus, open_nng_bus
from cordtrio.protocol import BusPacket, JobRequest, JobResult, decode_packet

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
    return decode_packet(wire)
