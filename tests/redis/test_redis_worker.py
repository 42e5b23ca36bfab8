"""A worker on a live ``RedisPayloadStore``: its job inputs read from Redis, its results
written by the batcher with a callback (``put_result_then``), and every job reported from
that callback (``Worker._stored``, run from the batcher's asyncio sender through
trio-asyncio): stored, published and acknowledged, as when the slot awaited the write."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.payloads import RedisPayloadStore
from cordtrio.payloads import context_key, pointer_for_key, result_key
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobRequest,
    JobResult,
    JobStatus,
)
from cordtrio.worker import Job, open_worker

TOPIC = "job.test.echo"
JOBS = 50


class CountedStore(RedisPayloadStore):
    """The Redis payload store, counting the result writes it took with a callback."""

    taken_then = 0

    def put_result_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> bool:
        taken = super().put_result_then(key, data, done)
        self.taken_then += taken
        return taken


async def echo(job: Job) -> dict[str, Any]:
    await trio.sleep(0)  # (the next job meets a busy slot now and then)
    return {"echo": job.input}


async def test_a_worker_reports_every_result_from_its_redis_writes_reply(
        redis: RedisBackends) -> None:
    bus = MemoryBus()
    store = CountedStore(redis.redis)  # a worker's own: it reads no results
    inputs = RedisPayloadStore(redis.redis)
    requests = []
    for i in range(JOBS):
        job_id = f"r:s[{i}]@1"
        ptr = ""
        if i % 2:  # every other job has an input, read from Redis
            key = context_key(job_id)
            await inputs.put_context(key, json.dumps({"i": i}).encode())
            ptr = pointer_for_key(key)
        requests.append(JobRequest(job_id=job_id, topic=TOPIC, context_ptr=ptr,
                                   env={"run_id": "r", "step_id": f"s[{i}]"}))
    async with (
        bus.subscribe(SUBJECT_RESULT) as channel,
        open_worker(bus, store, {TOPIC: echo}, max_concurrency=8) as worker,
    ):
        for request in requests:
            await bus.publish(SUBJECT_SUBMIT, BusPacket(trace_id="t", payload=request))
        got: dict[str, JobResult] = {}
        with trio.fail_after(30):
            while len(got) < JOBS:
                result = (await channel.receive()).payload
                assert isinstance(result, JobResult)
                got[result.job_id] = result
            while worker.running or bus.jobs.held:
                await trio.sleep(0.01)  # the last acknowledgements
        assert (worker.handled, worker.succeeded, worker.running) == (JOBS, JOBS, 0)
        assert bus.jobs.held == 0  # every job acknowledged
    assert store.taken_then == JOBS  # every result written with a callback
    assert {r.status for r in got.values()} == {JobStatus.SUCCEEDED}
    reader = RedisPayloadStore(redis.redis)
    for i, request in enumerate(requests):
        result = got[request.job_id]
        assert result.result_ptr == pointer_for_key(result_key(request.job_id))
        stored = json.loads(await reader.get_result(result_key(request.job_id)))
        assert stored == {"echo": {"i": i} if i % 2 else {}}
