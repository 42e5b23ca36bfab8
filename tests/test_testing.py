"""cordtrio.testing: the doubles users build their own tests on."""

from __future__ import annotations

import trio

from cordtrio import JobCancel, JobRequest, Workflow, open_engine
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.protocol import SUBJECT_CANCEL, SUBJECT_SUBMIT
from cordtrio.testing import RecordingBus, TrioWallClock


async def test_recording_bus_records_what_the_engine_publishes(autojump_clock: object) -> None:
    store, bus = MemoryStore(), RecordingBus(MemoryBus())
    await store.save_workflow(Workflow.from_dict(
        {"id": "wf", "steps": {"a": {"topic": "job.a", "timeout_sec": 30}}}))
    async with open_engine(store, bus, payloads=MemoryPayloadStore()) as engine:
        run_id = await engine.submit("wf")
        await trio.sleep(31)  # no worker: the step times out and its job is cancelled
        requests = bus.payloads(SUBJECT_SUBMIT)
        cancels = bus.payloads(SUBJECT_CANCEL)
    assert [type(r) for r in requests] == [JobRequest]
    assert isinstance(requests[0], JobRequest) and requests[0].job_id == f"{run_id}:a@1"
    assert [c.job_id for c in cancels if isinstance(c, JobCancel)] == [f"{run_id}:a@1"]
    assert bus.published[-1].time - bus.published[0].time == 30


async def test_trio_wall_clock_follows_the_mock_clock(autojump_clock: object) -> None:
    clock = TrioWallClock()
    before = clock.now()
    await trio.sleep(3600)
    assert (clock.now() - before).total_seconds() == 3600


async def test_clocks_in_one_trio_run_agree_so_a_reopened_engine_keeps_time(
    autojump_clock: object,
) -> None:
    first = TrioWallClock()
    await trio.sleep(7200)
    second = TrioWallClock()  # e.g. the default clock of an engine opened later
    assert second.now() == first.now()


def test_first_failing_seed_is_none_when_every_seed_passes() -> None:
    from cordtrio.testing import first_failing_seed

    assert first_failing_seed(range(3), runs=2) is None
