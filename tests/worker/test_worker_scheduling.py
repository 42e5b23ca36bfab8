"""Worker scheduling (API.md "Workers"): concurrency, topics, queue groups, the
block's lifetime.

One test per promised behaviour, on Trio's autojump clock: handlers that "sleep for an
hour" cost nothing, and a result that never comes fails at ``fail_after``.
"""

from __future__ import annotations

import gc
from collections import Counter
from functools import partial
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from worker_kit import (
    TOPIC,
    WAIT,
    assert_no_more_results,
    echo,
    make_request,
    next_result,
    results,
    submit,
)

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.engine.gc_tuning import GEN0_THRESHOLD
from cordtrio.protocol import (
    JobStatus,
)
from cordtrio.testing import PlainBus
from cordtrio.worker import Job, open_worker, serve_worker

# --------------------------------------------------------------------------- scheduling


async def test_max_concurrency_caps_running_handlers(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    limit, jobs = 3, 10
    current = peak = 0

    async def busy(job: Job) -> None:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        try:
            await trio.sleep(1)
        finally:
            current -= 1

    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: busy}, max_concurrency=limit
    ):
        for i in range(jobs):
            await submit(bus, make_request(f"r:s[{i}]@1"))
        done = [await next_result(channel) for _ in range(jobs)]

    assert peak == limit
    assert sorted(r.job_id for r in done) == sorted(f"r:s[{i}]@1" for i in range(jobs))
    assert all(r.status == JobStatus.SUCCEEDED for r in done)


async def test_slots_start_as_jobs_need_them_up_to_max_concurrency(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    """A burst of handlers that never wait is run by the first slots in turn; handlers
    that wait make the worker start slots up to its concurrency, never beyond, and every
    job still runs as soon as there is room for it."""
    release = trio.Event()
    started = 0

    async def gated(job: Job) -> None:
        nonlocal started
        started += 1
        if job.request.env.get("wait"):
            await release.wait()

    async with results(bus) as channel, open_worker(
        bus, payloads, {TOPIC: gated}, max_concurrency=8, prefetch=20
    ) as worker:
        await trio.testing.wait_all_tasks_blocked()
        assert worker._slots == 1
        for i in range(10):
            await submit(bus, make_request(f"r:q[{i}]@1"))
        for _ in range(10):
            await next_result(channel)
        await trio.testing.wait_all_tasks_blocked()
        assert worker._slots <= 2  # one ran them, one waited for more
        for i in range(12):
            await submit(bus, make_request(f"r:w[{i}]@1", env={"wait": "1"}))
        await trio.testing.wait_all_tasks_blocked()
        assert (worker.running, worker._slots, started) == (8, 8, 18)
        release.set()
        for _ in range(12):
            assert (await next_result(channel)).status == JobStatus.SUCCEEDED
        assert (started, worker._slots) == (22, 8)


@pytest.mark.parametrize("plain", [False, True], ids=["job-queues", "queue-group"])
async def test_a_burst_of_waiting_jobs_starts_in_a_few_scheduling_rounds(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock, plain: bool
) -> None:
    """Slots started as needed double with jobs buffered: 64 handlers that wait are all
    running after a handful of rounds, not one round per slot; on a plain bus too (a
    queue group's channel, which does not show what it buffers)."""
    release = trio.Event()

    async def gated(job: Job) -> None:
        await release.wait()

    async with results(bus) as channel, open_worker(
        PlainBus(bus) if plain else bus, payloads, {TOPIC: gated}, max_concurrency=64,
        prefetch=0,
    ) as worker:
        for i in range(64):
            await submit(bus, make_request(f"r:w[{i}]@1"))
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        assert (worker.running, worker._slots) == (64, 64)
        release.set()
        for _ in range(64):
            await next_result(channel)


async def test_unknown_topic_is_ignored(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: echo}) as worker:
        await submit(bus, make_request("r:other@1", topic="job.someone.else"))
        await submit(bus, make_request("r:mine@1"))
        assert (await next_result(channel)).job_id == "r:mine@1"
        await assert_no_more_results(channel)
    assert worker.handled == 1


async def test_each_job_goes_to_exactly_one_worker_of_its_topic_whatever_their_topic_sets(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    jobs = 40
    handled_by: Counter[str] = Counter()

    async def work(job: Job) -> None:
        await trio.sleep(0.1)

    async with (
        results(bus) as channel,
        open_worker(bus, payloads, {TOPIC: work}, worker_id="a", max_concurrency=2),
        open_worker(bus, payloads, {TOPIC: work}, worker_id="b", max_concurrency=2),
        # another topic set (a rolling upgrade): still one queue per topic
        open_worker(bus, payloads, {TOPIC: work, "job.other": work}, worker_id="c",
                    max_concurrency=2),
    ):
        for i in range(jobs):
            await submit(bus, make_request(f"r:s[{i}]@1"))
        for _ in range(jobs):
            result = await next_result(channel)
            handled_by[result.worker_id] += 1
        await assert_no_more_results(channel)

    assert sum(handled_by.values()) == jobs  # each job exactly once
    assert all(handled_by[w] > 0 for w in "abc"), handled_by


async def test_leaving_the_block_cancels_running_handlers_without_results(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    started = trio.Event()
    cancelled: list[str] = []

    async def forever(job: Job) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(job.job_id)
            raise

    async with results(bus) as channel:
        async with open_worker(bus, payloads, {TOPIC: forever}) as worker:
            await submit(bus, make_request("r:s@1"))
            with trio.fail_after(WAIT):
                await started.wait()
        assert cancelled == ["r:s@1"]
        assert worker.handled == 0
        await assert_no_more_results(channel)
        # Unsubscribed: a job published now waits for a worker; nothing runs it yet.
        await submit(bus, make_request("r:t@1"))
        await assert_no_more_results(channel)
        assert bus.jobs.pending == 2  # the interrupted job went back to its queue
        # the next worker of the topic takes both
        async with open_worker(bus, payloads, {TOPIC: echo}):
            got = {(await next_result(channel)).job_id for _ in range(2)}
        assert got == {"r:s@1", "r:t@1"}
    assert cancelled == ["r:s@1"]


async def test_exception_in_the_body_propagates_unwrapped(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    with pytest.raises(RuntimeError, match="body failed"):
        async with open_worker(bus, payloads, {TOPIC: echo}):
            raise RuntimeError("body failed")


async def test_subscribe_failure_propagates_unwrapped(payloads: MemoryPayloadStore) -> None:
    class DeadBus(MemoryBus):
        def subscribe(self, subject: str, queue: str = "") -> Any:
            raise OSError("bus unreachable")

    with pytest.raises(OSError, match="bus unreachable"):
        async with open_worker(DeadBus(), payloads, {TOPIC: echo}):
            pytest.fail("the body must not run without subscriptions")


async def test_outer_cancellation_propagates_through_the_block(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    after_block = False
    with trio.CancelScope() as scope:
        async with open_worker(bus, payloads, {TOPIC: echo}):
            scope.cancel()
            await trio.sleep(1)
        after_block = True
    assert scope.cancelled_caught
    assert not after_block


async def test_bad_arguments_are_rejected(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        async with open_worker(bus, payloads, {TOPIC: echo}, max_concurrency=0):
            pass
    with pytest.raises(ValueError, match="handler"):
        async with open_worker(bus, payloads, {}):
            pass


async def test_the_worker_tunes_the_collector_while_it_serves_unless_told_not_to(
    bus: MemoryBus, payloads: MemoryPayloadStore
) -> None:
    before = gc.get_threshold()
    async with open_worker(bus, payloads, {TOPIC: echo}):
        assert gc.get_threshold()[0] == max(GEN0_THRESHOLD, before[0])
    assert gc.get_threshold() == before
    async with open_worker(bus, payloads, {TOPIC: echo}, tune_gc=False):
        assert gc.get_threshold() == before
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_worker, bus, payloads, {TOPIC: echo}))
        assert gc.get_threshold()[0] == max(GEN0_THRESHOLD, before[0])
        nursery.cancel_scope.cancel()
    assert gc.get_threshold() == before
