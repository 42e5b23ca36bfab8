"""What the worker tests share: building job requests, submitting them over the bus,
and reading the results the worker publishes (with ``fail_after`` on the autojump
clock, so a result that never comes fails fast instead of hanging)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.payloads import (
    RESULT_PREFIX,
    check_payload_key,
    context_key,
    key_from_pointer,
    pointer_for_key,
)
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    Budget,
    BusPacket,
    JobRequest,
    JobResult,
)
from cordtrio.worker import Job

TOPIC = "job.test.echo"
WAIT = 60  # virtual seconds; with the autojump clock a missing result fails fast


def make_request(
    job_id: str = "run-1:step@1",
    *,
    topic: str = TOPIC,
    context_ptr: str = "",
    deadline_ms: int = 0,
    env: dict[str, str] | None = None,
) -> JobRequest:
    run_id, _, rest = job_id.rpartition(":")
    step_id = rest.partition("@")[0]
    return JobRequest(
        job_id=job_id,
        topic=topic,
        context_ptr=context_ptr,
        env={"run_id": run_id, "step_id": step_id, **(env or {})},
        budget=Budget(deadline_ms=deadline_ms) if deadline_ms else None,
    )


async def submit(bus: MemoryBus, request: JobRequest, trace_id: str = "trace-1") -> None:
    await bus.publish(SUBJECT_SUBMIT, BusPacket(trace_id=trace_id, payload=request))


async def submit_with_input(
    bus: MemoryBus, payloads: MemoryPayloadStore, job_id: str, data: dict[str, Any], **kw: Any
) -> None:
    key = context_key(job_id)
    await payloads.put_context(key, json.dumps(data).encode())
    await submit(bus, make_request(job_id, context_ptr=pointer_for_key(key), **kw))


@asynccontextmanager
async def results(bus: MemoryBus) -> AsyncIterator[trio.abc.ReceiveChannel[BusPacket]]:
    """Every packet published on ``sys.job.result`` while the block runs."""
    async with bus.subscribe(SUBJECT_RESULT) as channel:
        yield channel


async def next_result(channel: trio.abc.ReceiveChannel[BusPacket]) -> JobResult:
    with trio.fail_after(WAIT):
        packet = await channel.receive()
    assert isinstance(packet.payload, JobResult)
    return packet.payload


async def assert_no_more_results(channel: trio.abc.ReceiveChannel[BusPacket]) -> None:
    with trio.move_on_after(WAIT):
        packet = await channel.receive()
        pytest.fail(f"unexpected result {packet.payload!r}")


async def echo(job: Job) -> dict[str, Any]:
    return {"echo": job.input}


class BytesPayloads(MemoryPayloadStore):
    """The memory payload store taking bytes only (``takes_json_payloads``): a worker
    encodes and decodes every payload itself, as with the Redis store."""

    takes_json_payloads = False


class ThenPayloads(BytesPayloads):
    """``BytesPayloads`` whose result writes report to a callback (``put_result_then``,
    as ``RedisPayloadStore``'s), and whose job inputs are read by their pointer
    (``get_context_at``, as its): a worker's slot goes on without waiting for the write,
    and the job is reported by the callback (``Worker._stored``). The write is done by a
    task of its own, later; a write that fails hands None to the callback."""

    writes_results_then = True
    reads_contexts_at = True  # and reads a job's input by its pointer, in one call

    async def get_context_at(self, ptr: str) -> bytes:
        return await self.get_context(key_from_pointer(ptr))

    def put_result_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> bool:
        check_payload_key(key, RESULT_PREFIX)
        trio.lowlevel.spawn_system_task(self._write_then, key, data, done)
        return True

    async def _write_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> None:
        try:
            await self.put_result(key, data)
        except Exception:
            done(None)
        else:
            done(True)
