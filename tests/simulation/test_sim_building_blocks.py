"""The pieces ``cordtrio.testing`` ships: ``FaultyBus``, ``FlakyStore``, ``WorkerPool`` /
``SimulatedWorker``, ``random_workflow`` and the Hypothesis strategies."""

from __future__ import annotations

import math
import random

import pytest
import trio
from hypothesis import given, settings

from cordtrio.backends.job_queues import DEFAULT_MAX_REDELIVERIES
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.errors import StoreError
from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.ports import Bus, RunChanges
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobResult,
    JobStatus,
)
from cordtrio.testing import (
    FaultProfile,
    FlakyStore,
    PlainBus,
    SimulatedWorker,
    SubjectFaults,
    open_faulty_bus,
    random_run_input,
    random_workflow,
    resolve_profile,
)
from cordtrio.testing.strategies import workflows
from cordtrio.validation import validate_workflow


def packet(n: int) -> BusPacket:
    return BusPacket("t", "test", None, 1, JobResult(f"run:s@{n}", JobStatus.SUCCEEDED))


async def publish_and_collect(profile: FaultProfile, count: int = 5, *, seed: int = 1,
                              settle: float = 60.0, subject: str = SUBJECT_RESULT,
                              bus: Bus | None = None) -> list[str]:
    bus = bus or MemoryBus()
    got: list[str] = []
    async with bus.subscribe(subject, max_buffer=math.inf) as channel, \
            open_faulty_bus(bus, random.Random(seed), profile=profile) as faulty:
        for n in range(count):
            await faulty.publish(subject, packet(n))
        await trio.sleep(settle)
        while True:
            try:
                got.append(channel.receive_nowait().payload.job_id)
            except trio.WouldBlock:
                break
    return got


def only(subject: str = SUBJECT_RESULT, **faults: float) -> FaultProfile:
    return FaultProfile(subjects={subject: SubjectFaults(**faults)})


async def test_faulty_bus_drops(autojump_clock: trio.testing.MockClock) -> None:
    assert await publish_and_collect(only(SUBJECT_CANCEL, drop=1.0),
                                     subject=SUBJECT_CANCEL) == []
    # over a bus without job queues, results are lost too
    assert await publish_and_collect(only(drop=1.0), bus=PlainBus(MemoryBus())) == []


async def test_over_a_job_bus_jobs_and_results_are_never_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for subject in (SUBJECT_RESULT, SUBJECT_SUBMIT):
        got = await publish_and_collect(only(subject, drop=1.0), subject=subject)
        assert got == [f"run:s@{n}" for n in range(5)]


async def test_faulty_bus_duplicates(autojump_clock: trio.testing.MockClock) -> None:
    got = await publish_and_collect(only(duplicate=1.0), 2)
    assert got == ["run:s@0", "run:s@0", "run:s@1", "run:s@1"]


async def test_faulty_bus_reorders_after_the_next_packet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got = await publish_and_collect(only(reorder=1.0), 4)
    # each packet is held and released right after the next one
    assert got == ["run:s@1", "run:s@0", "run:s@3", "run:s@2"]


async def test_faulty_bus_releases_a_held_packet_eventually(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await publish_and_collect(only(reorder=1.0), 1) == ["run:s@0"]


async def test_faulty_bus_delays(autojump_clock: trio.testing.MockClock) -> None:
    bus = MemoryBus()
    async with bus.subscribe(SUBJECT_RESULT) as channel, open_faulty_bus(
        bus, random.Random(3), profile=only(delay=1.0, max_delay=5.0)
    ) as faulty:
        start = trio.current_time()
        await faulty.publish(SUBJECT_RESULT, packet(0))
        assert trio.current_time() == start  # publish does not wait
        await channel.receive()
        assert 0 <= trio.current_time() - start <= 5.0
        assert faulty.injected["delay"] == 1


async def test_faulty_bus_counts_and_stops(autojump_clock: trio.testing.MockClock) -> None:
    bus = MemoryBus()
    async with open_faulty_bus(bus, random.Random(0), profile="heavy") as faulty:
        for n in range(200):
            await faulty.publish(SUBJECT_RESULT, packet(n))
        assert faulty.total_injected > 0
        before = dict(faulty.injected)
        faulty.stop()
        for n in range(50):
            await faulty.publish(SUBJECT_RESULT, packet(n))
        assert dict(faulty.injected) == before


def test_fault_profiles() -> None:
    assert not resolve_profile("none").any
    assert resolve_profile("light").for_subject("x").drop > 0
    assert resolve_profile("heavy").for_subject("x").drop > resolve_profile("light").default.drop
    with pytest.raises(ValueError, match="unknown fault profile"):
        resolve_profile("medium")
    with pytest.raises(ValueError, match="probability"):
        SubjectFaults(drop=1.5)


async def test_flaky_store_fails_before_writing() -> None:
    inner = MemoryStore()
    failures: list[str] = []
    store = FlakyStore(inner, random.Random(0), 1.0, on_fail=lambda m, r: failures.append(m))
    run = WorkflowRun(id="r1", workflow_id="wf", status=RunStatus.PENDING)
    with pytest.raises(StoreError):
        await store.create_run(run)
    with pytest.raises(StoreError):
        await store.save_run_changes(run, RunChanges(header=True))
    with pytest.raises(StoreError):
        await store.append_timeline_events("r1", [])
    assert failures == ["create_run", "save_run_changes", "append_timeline_events"]
    assert await inner.list_run_ids_by_status("pending") == []  # nothing was written
    store.stop()
    await store.create_run(run)
    assert (await store.get_run("r1")).id == "r1"
    assert store.total_failures == 3


def test_flaky_store_rate_is_a_probability() -> None:
    with pytest.raises(ValueError):
        FlakyStore(MemoryStore(), random.Random(0), 2.0)


def test_simulated_worker_validation() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimulatedWorker(fail_rate=0.6, hang_rate=0.6)
    with pytest.raises(ValueError, match="latency"):
        SimulatedWorker(latency=(2.0, 1.0))
    assert SimulatedWorker.preset("light").calm().hang_rate == 0
    with pytest.raises(ValueError):
        SimulatedWorker.preset("nope")


async def test_worker_pool_counts_and_crashes(autojump_clock: trio.testing.MockClock) -> None:
    from cordtrio import open_engine
    from cordtrio.model import Step, StepType, Workflow
    from cordtrio.testing import TrioWallClock, WorkerPool

    wf = Workflow(id="wf", steps={"a": Step(id="a", type=StepType.WORKER, topic="job.a",
                                            timeout_sec=5)})
    store, bus, payloads = MemoryStore(), MemoryBus(), MemoryPayloadStore()
    await store.save_workflow(wf)
    events: list[tuple[str, str]] = []
    pool = WorkerPool(SimulatedWorker(latency=(0.1, 0.2), crash_rate=1.0), random.Random(2),
                      topics=("job.a",), workers=1, listener=lambda w, d: events.append((w, d)))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run, bus, payloads)
        async with open_engine(store, bus, payloads=payloads, clock=TrioWallClock()) as engine:
            run_id = await engine.submit("wf")
            with trio.fail_after(600):
                lost = await engine.wait_run(run_id)
            pool.calm()
            pool.spec = SimulatedWorker(latency=(0.1, 0.2))
            rerun = await engine.submit("wf")
            final = await engine.wait_run(rerun)
        nursery.cancel_scope.cancel()
    assert final.status == RunStatus.SUCCEEDED
    assert pool.crashes >= 1
    assert ("crash", f"{run_id}:a@1") in events
    # each crash hands the job to the restarted worker, until the redelivery bound
    assert pool.executions[f"{run_id}:a@1"] == 1 + DEFAULT_MAX_REDELIVERIES
    assert lost.status == RunStatus.FAILED
    assert "worker lost" in lost.steps["a"].error["message"]
    assert pool.per_step[(rerun, "a")] == 1


def test_random_workflow_is_valid_and_seeded() -> None:
    for seed in range(300):
        wf = random_workflow(random.Random(seed))
        validate_workflow(wf)
        jobs = [s for s in wf.steps.values() if s.topic]
        assert all(s.timeout_sec > 0 for s in jobs)  # require_timeouts by default
    a = random_workflow(random.Random(5))
    b = random_workflow(random.Random(5))
    assert a.to_dict() == b.to_dict()
    assert random_run_input(random.Random(1)) == random_run_input(random.Random(1))


@settings(max_examples=50, deadline=None)
@given(workflows())
def test_public_strategies_generate_valid_workflows(wf: object) -> None:
    validate_workflow(wf)  # type: ignore[arg-type]
