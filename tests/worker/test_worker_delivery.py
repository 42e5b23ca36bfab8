"""The worker's side of at-least-once delivery (SPEC §13): it acknowledges a job only after
its result is published, holds at most ``max_concurrency + prefetch`` jobs, reports the
start of jobs that have a deadline, and stops (without reporting) a job the bus took back.
"""

from __future__ import annotations

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
from cordtrio.protocol import (
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    BusPacket,
    JobProgress,
    JobResult,
    JobStatus,
)
from cordtrio.worker import Job, open_worker


async def test_a_job_is_acknowledged_only_after_its_result_is_published(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    release = trio.Event()

    async def gated(job: Job) -> dict[str, int]:
        await release.wait()
        return {"ok": 1}

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: gated}):
        await submit(bus, make_request("r:s@1"))
        await trio.testing.wait_all_tasks_blocked()
        assert bus.jobs.owns("r:s@1") and bus.jobs.held == 1  # running: still the bus's
        release.set()
        assert (await next_result(channel)).status == JobStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()
        assert not bus.jobs.owns("r:s@1")  # acknowledged once the result was out


async def test_a_worker_holds_at_most_its_concurrency_plus_prefetch(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(10)

    async with (
        results(bus) as channel,
        open_worker(bus, payloads, {TOPIC: slow}, max_concurrency=2, prefetch=1) as worker,
    ):
        for i in range(10):
            await submit(bus, make_request(f"r:s{i}@1"))
        await trio.testing.wait_all_tasks_blocked()
        assert worker.running == 2
        assert bus.jobs.held == 3 and bus.jobs.pending == 7
        for _ in range(10):
            await next_result(channel)
        assert bus.jobs.held == 0 and bus.jobs.pending == 0


async def test_a_worker_that_leaves_mid_job_hands_the_job_to_the_next_one(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    runs: list[str] = []

    async def hangs(job: Job) -> None:
        runs.append("first")
        await trio.sleep_forever()

    async def finishes(job: Job) -> dict[str, str]:
        runs.append("second")
        return {"by": "second"}

    async with results(bus) as channel:
        async with open_worker(bus, payloads, {TOPIC: hangs}) as first:
            await submit(bus, make_request("r:s@1"))
            await trio.testing.wait_all_tasks_blocked()
        assert first.handled == 0
        async with open_worker(bus, payloads, {TOPIC: finishes}):
            result = await next_result(channel)
        assert (result.job_id, result.status) == ("r:s@1", JobStatus.SUCCEEDED)
        await assert_no_more_results(channel)
    assert runs == ["first", "second"]


async def test_the_start_of_a_job_with_a_deadline_is_reported_and_others_are_not(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    async with (
        bus.subscribe(SUBJECT_PROGRESS) as progress,
        results(bus) as channel,
        open_worker(bus, payloads, {TOPIC: echo}, worker_id="w7"),
    ):
        await submit(bus, make_request("r:plain@1"))
        await submit(bus, make_request("r:timed@1", deadline_ms=5000))
        await next_result(channel)
        await next_result(channel)
        with trio.fail_after(WAIT):
            packet = await progress.receive()
        await trio.testing.wait_all_tasks_blocked()
        extra = []
        while True:
            try:
                extra.append(progress.receive_nowait())
            except trio.WouldBlock:
                break
    start = packet.payload
    assert isinstance(start, JobProgress)
    assert (start.job_id, start.status) == ("r:timed@1", JobStatus.RUNNING)
    assert "w7" in start.message
    assert extra == []


async def test_a_job_the_bus_takes_back_is_stopped_and_not_reported(
    bus: MemoryBus, payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    stopped: list[str] = []

    async def forever(job: Job) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(job.job_id)

    async with results(bus) as channel, open_worker(bus, payloads, {TOPIC: forever}) as w:
        await submit(bus, make_request("r:s@1"))
        await trio.testing.wait_all_tasks_blocked()
        w._job_lost("r:s@1")  # what a bus calls through ``JobInbox.on_lost``
        await trio.testing.wait_all_tasks_blocked()
        assert stopped == ["r:s@1"]
        assert (w.lost, w.handled, w.running) == (1, 0, 0)
        await assert_no_more_results(channel)


async def test_a_result_handed_to_the_engines_listener_acknowledges_its_job_at_once(
    payloads: MemoryPayloadStore, autojump_clock: MockClock
) -> None:
    """With the engine's ``listen`` callback alone on ``sys.job.result``, a result is
    published and its job acknowledged in one call (``report_now``); a bus that changes
    ``publish`` sees every result through it, and acknowledges the same way."""

    class Observed(MemoryBus):
        published: list[str] = []

        async def publish(self, subject: str, packet: BusPacket) -> None:
            self.published.append(subject)
            await super().publish(subject, packet)

    await _three_results_through_a_listener(MemoryBus(), payloads)
    await _three_results_through_a_listener(Observed(), payloads)
    assert Observed.published.count(SUBJECT_RESULT) == 3


async def _three_results_through_a_listener(bus: MemoryBus,
                                            payloads: MemoryPayloadStore) -> None:
    got: list[JobResult] = []
    owned: list[bool] = []

    def on_result(packet: BusPacket) -> None:
        assert isinstance(packet.payload, JobResult)
        got.append(packet.payload)
        owned.append(bus.jobs.owns(packet.payload.job_id))  # acknowledged after this

    async with (
        bus.listen(SUBJECT_RESULT, "engine", on_result),
        open_worker(bus, payloads, {TOPIC: echo}) as worker,
    ):
        for i in range(3):
            await submit(bus, make_request(f"r:s{i}@1"))
        with trio.fail_after(WAIT):
            while len(got) < 3:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.jobs.held == 0 and not any(bus.jobs.owns(r.job_id) for r in got)
        # the one call on the bus itself; never past a bus that changes ``publish``
        assert (worker._reporter.report_now is not None) == (type(bus) is MemoryBus)
    assert [r.status for r in got] == [JobStatus.SUCCEEDED] * 3
    assert owned == [True] * 3
    assert worker.succeeded == 3
