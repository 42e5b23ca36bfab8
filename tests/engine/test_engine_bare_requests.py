"""On the in-memory bus the engine hands a job request over bare when the job queues alone
take ``sys.job.submit`` (``MemoryBus.submit_now``: no ``BusPacket`` built; the queues keep
the packet's fields beside the request). A cordtrio worker takes the job as it is; anyone
else who takes it (a plain ``consume_jobs`` consumer, the job handed back and on) gets the
packet the engine would have published, with all its fields; anyone who could see the
request on the bus (a tap, a wildcard subscriber, an encoding bus) makes the engine publish
the packet as before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from test_engine_kit import WF, step

from cordtrio.backends.memory import MemoryBus
from cordtrio.core.plan import SENDER_ID
from cordtrio.engine import open_engine
from cordtrio.model import RunStatus
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_PROGRESS,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    Budget,
    BusPacket,
    JobProgress,
    JobRequest,
    JobResult,
)
from cordtrio.worker import Job, open_worker

WAIT = 10.0
TOPIC = "job.test"


def _request(job_id: str = "r1:a@1") -> JobRequest:
    return JobRequest(job_id=job_id, topic=TOPIC, context_ptr="", budget=Budget(0))


async def _one_run(store: Any, bus: MemoryBus, payloads: Any, handler: Any) -> str:
    """One run of the saved workflow, with an engine and a worker (``w1``) serving
    ``handler``, to its success; its id."""
    async with (
        open_engine(store, bus, payloads=payloads) as engine,
        open_worker(bus, payloads, {TOPIC: handler}, worker_id="w1"),
    ):
        run_id = await engine.submit(WF)
        with trio.fail_after(WAIT):
            run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    return run_id


async def test_the_worker_takes_the_engines_jobs_bare(store, payloads, save) -> None:
    """Engine and worker alone on the bus: every request is kept bare by the queues (no
    packet), and the run succeeds."""
    bus = MemoryBus()
    kept: list[Any] = []

    async def handler(job: Job) -> dict[str, str]:
        queued = bus.jobs.get(job.job_id)
        assert queued is not None
        kept.append((queued.item, queued.trace_id, queued.sender_id, queued.created_at))
        return {"ok": job.job_id}

    await save(step("a"), step("b", depends_on=["a"]))
    run_id = await _one_run(store, bus, payloads, handler)
    assert [k[0].__class__ for k in kept] == [JobRequest, JobRequest]  # no packet
    for _item, trace_id, sender_id, created_at in kept:
        assert (trace_id, sender_id) == (run_id, SENDER_ID)
        assert isinstance(created_at, datetime)
    assert bus.jobs.held == 0 and bus.jobs.pending == 0


async def test_a_plain_consumer_gets_the_packet_the_engine_would_publish(
        store, payloads, save) -> None:
    """A ``consume_jobs`` consumer that is not a cordtrio worker gets each job in a packet
    equal to the one the engine publishes when it cannot hand the job bare (a subscriber
    of ``sys.job.submit`` sees that one)."""
    await save(step("a"))
    for tapped in (False, True):
        bus = MemoryBus()
        async with (
            open_engine(store, bus, payloads=payloads) as engine,
            bus.consume_jobs([TOPIC], capacity=4) as inbox,
        ):
            if tapped:
                async with bus.subscribe(SUBJECT_SUBMIT) as tap:
                    run_id = await engine.submit(WF)
                    with trio.fail_after(WAIT):
                        seen = await tap.receive()
                        while not seen.payload.job_id.startswith(f"{run_id}:"):
                            seen = await tap.receive()  # (the recovered run's: below)
            else:
                run_id = await engine.submit(WF)
            with trio.fail_after(WAIT):
                packet = await inbox.receive()
                # (the first pass's run, recovered from the store by this engine, may
                # reach the inbox first: its job is not the one to compare)
                while not packet.payload.job_id.startswith(f"{run_id}:"):
                    packet = await inbox.receive()
            if tapped:
                assert packet is seen
            assert packet.__class__ is BusPacket
            assert packet == BusPacket(run_id, SENDER_ID, packet.created_at, PROTOCOL_VERSION,
                                       packet.payload)
            assert isinstance(packet.created_at, datetime)
            assert isinstance(packet.payload, JobRequest)
            assert packet.payload.job_id == f"{run_id}:a@1"


async def test_submit_now_keeps_the_request_bare_only_for_a_worker_that_takes_it() -> None:
    bus = MemoryBus()
    at = datetime.now(UTC)
    async with bus.consume_jobs([TOPIC], capacity=4) as inbox:
        assert bus.submit_now(_request("r1:a@1"), "r1", at, "engine-x")
        packet = inbox.receive_nowait()
        assert packet == BusPacket("r1", "engine-x", at, PROTOCOL_VERSION, _request("r1:a@1"))
        inbox.bare_jobs = True
        request = _request("r1:b@1")
        assert bus.submit_now(request, "r1", at, "engine-x")
        job = inbox.receive_nowait()
        assert job.item is request and job.trace_id == "r1"
        assert bus.submit_now(request, "r1", at, "engine-x")  # a duplicate: ignored
        assert bus.jobs.duplicates == 1 and bus.jobs.held == 2
        inbox.ack("r1:a@1")
        inbox.ack("r1:b@1")
    assert bus.jobs.held == 0


@pytest.mark.parametrize("other", ["subscriber", "listener", "wildcard", "codec"])
async def test_no_bare_request_while_anyone_else_could_see_requests(other: str) -> None:
    """A subscriber or listener of ``sys.job.submit``, a wildcard subscriber, an encoding
    bus: ``submit_now`` does nothing (the engine then publishes the packet)."""
    bus = MemoryBus(codec=other == "codec")
    at = datetime.now(UTC)
    opened = {
        "subscriber": lambda: bus.subscribe(SUBJECT_SUBMIT),
        "listener": lambda: bus.listen(SUBJECT_SUBMIT, "", lambda p: None),
        "wildcard": lambda: bus.subscribe("sys.>"),
        "codec": lambda: bus.subscribe("nothing.here"),
    }[other]
    async with bus.consume_jobs([TOPIC], capacity=4) as inbox:
        inbox.bare_jobs = True
        async with opened():
            assert not bus.submit_now(_request(), "r1", at, "e")
            assert bus.jobs.held == 0 and not inbox.ready
        assert bus.submit_now(_request(), "r1", at, "e") is (other != "codec")


async def test_a_bare_job_handed_back_reaches_the_next_consumer_in_its_packet() -> None:
    bus = MemoryBus()
    at = datetime.now(UTC)
    request = _request("r1:a@1")
    async with bus.consume_jobs([TOPIC], capacity=1) as plain:
        assert bus.submit_now(_request("r0:x@1"), "r0", at, "e")  # fills the plain one
        async with bus.consume_jobs([TOPIC], capacity=1) as bare:
            bare.bare_jobs = True
            assert bus.submit_now(request, "r1", at, "e")
            assert bare.receive_nowait().item is request
        # the bare consumer left without acknowledging: the job waits for the plain one,
        # which gets it in the packet the engine would have published
        assert plain.receive_nowait().payload.job_id == "r0:x@1"
        plain.ack("r0:x@1")
        packet = plain.receive_nowait()
        assert packet == BusPacket("r1", "e", at, PROTOCOL_VERSION, request)
        plain.ack("r1:a@1")
    assert bus.jobs.held == 0 and bus.jobs.redelivered == 1


async def test_a_lost_bare_job_is_reported_under_its_run() -> None:
    bus = MemoryBus(max_redeliveries=0)
    at = datetime.now(UTC)
    results: list[BusPacket] = []
    async with (
        bus.listen(SUBJECT_RESULT, "", results.append),
        bus.consume_jobs([TOPIC], capacity=1) as inbox,
    ):
        inbox.bare_jobs = True
        assert bus.submit_now(_request(), "r1", at, "e")
    [packet] = results
    assert packet.trace_id == "r1"
    assert isinstance(packet.payload, JobResult) and packet.payload.job_id == "r1:a@1"


async def test_a_bare_jobs_progress_and_result_packets_carry_its_run(
        store, payloads, save) -> None:
    """The worker's packets for a job it took bare (its start, for a step with a timeout;
    its result, when another listener of results makes it publish a packet) carry the
    run id as their trace id, as for a job taken in a packet."""
    bus = MemoryBus()
    await save(step("a", timeout_sec=30))
    progress: list[BusPacket] = []
    results: list[BusPacket] = []

    async def handler(job: Job) -> dict[str, str]:
        queued = bus.jobs.get(job.job_id)
        assert queued is not None and queued.item.__class__ is JobRequest
        return {}

    async with (
        bus.listen(SUBJECT_PROGRESS, "", progress.append),
        bus.listen(SUBJECT_RESULT, "", results.append),
    ):
        run_id = await _one_run(store, bus, payloads, handler)
    assert [(p.trace_id, p.sender_id) for p in progress] == [(run_id, "w1")]
    assert isinstance(progress[0].payload, JobProgress)
    assert [(p.trace_id, p.sender_id) for p in results] == [(run_id, "w1")]
