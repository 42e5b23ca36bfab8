"""On the in-memory bus a worker's result reaches the engine bare when the engine alone
listens to results (no ``BusPacket`` built for it: the engine reads nothing but the
payload); any other listener of results still gets every result in a packet with all its
fields, and the engine then gets the packets as before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import trio
from test_engine_kit import WF, step

from cordtrio import worker_report
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.engine import open_engine
from cordtrio.model import RunStatus, StepStatus, WorkflowRun
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobResult,
    JobStatus,
)
from cordtrio.worker import Job, open_worker

WAIT = 10.0


async def _handler(job: Job) -> dict[str, str]:
    return {"done": job.job_id}


def _count_result_packets(monkeypatch: Any) -> list[BusPacket]:
    """Result packets a worker builds from now on (its ``BusPacket``, counted)."""
    built: list[BusPacket] = []
    real = worker_report.BusPacket

    def counting(*args: Any) -> BusPacket:
        packet = real(*args)
        if isinstance(packet.payload, JobResult):
            built.append(packet)
        return packet

    monkeypatch.setattr(worker_report, "BusPacket", counting)
    return built


async def _run_two_steps(store: Any, bus: MemoryBus, payloads: MemoryPayloadStore,
                         save: Any) -> WorkflowRun:
    await save(step("a"), step("b", depends_on=["a"]))
    async with (
        open_engine(store, bus, payloads=payloads) as engine,
        open_worker(bus, payloads, {"job.test": _handler}, worker_id="w1"),
    ):
        run_id = await engine.submit(WF)
        with trio.fail_after(WAIT):
            return await engine.wait_run(run_id)


async def test_the_engine_alone_on_results_gets_them_with_no_packet_built(
        store, payloads, save, monkeypatch):
    built = _count_result_packets(monkeypatch)
    bus = MemoryBus()
    run = await _run_two_steps(store, bus, payloads, save)
    assert run.status == RunStatus.SUCCEEDED
    assert [s.status for s in run.steps.values()] == [StepStatus.SUCCEEDED] * 2
    assert built == []  # both results reached the engine bare
    assert bus.jobs.held == 0 and bus.jobs.pending == 0  # and were acknowledged


async def test_another_listener_of_results_gets_every_packet_with_all_its_fields(
        store, payloads, save, monkeypatch):
    built = _count_result_packets(monkeypatch)
    bus = MemoryBus()
    requests: dict[str, BusPacket] = {}
    tapped: list[BusPacket] = []
    before = datetime.now(UTC)
    async with (
        bus.listen(SUBJECT_SUBMIT, "", lambda p: requests.setdefault(p.payload.job_id, p)),
        bus.listen(SUBJECT_RESULT, "", tapped.append),
    ):
        run = await _run_two_steps(store, bus, payloads, save)
    assert run.status == RunStatus.SUCCEEDED
    assert tapped == built  # the very packets the worker built, in order
    assert [p.payload.job_id for p in tapped] == [f"{run.id}:a@1", f"{run.id}:b@1"]
    for packet in tapped:
        result = packet.payload
        assert isinstance(result, JobResult) and result.status is JobStatus.SUCCEEDED
        assert packet.trace_id == requests[result.job_id].trace_id != ""
        assert packet.sender_id == "w1" == result.worker_id
        assert packet.protocol_version == PROTOCOL_VERSION
        assert packet.created_at is not None
        assert before <= packet.created_at <= datetime.now(UTC)
        assert result.result_ptr


async def test_a_listener_taking_payloads_gets_them_bare_only_while_alone() -> None:
    """``MemoryBus.listen(on_payload=...)``: a worker's report goes to ``on_payload`` while
    the callback alone listens; with a second listener both get the packet."""
    bus = MemoryBus()
    packets: list[Any] = []
    bare: list[Any] = []
    result = JobResult(job_id="r:a@1", status=JobStatus.SUCCEEDED)
    async with (
        bus.listen(SUBJECT_RESULT, "engine", packets.append, on_payload=bare.append),
        bus.consume_jobs(["job.test"], capacity=1) as inbox,
    ):
        assert inbox.report_now is not None
        assert inbox.report_now(result)
        assert (bare, packets) == ([result], [])
        tap: list[BusPacket] = []
        async with bus.listen(SUBJECT_RESULT, "", tap.append):
            assert not inbox.report_now(result)  # nothing done: publish a packet
            assert bare == [result]
            packet = BusPacket("t", "w", datetime.now(UTC), PROTOCOL_VERSION, result)
            await bus.publish(SUBJECT_RESULT, packet)
            assert packets == [packet] and tap == [packet]
        assert inbox.report_now(result)
        assert bare == [result, result] and packets == [packet]


async def test_no_bare_result_while_anyone_else_could_see_results() -> None:
    """A second member of the engine's queue group, a wildcard subscriber, a plain
    callback on the subject: each makes the worker publish a packet (``report_now`` does
    nothing); once it leaves, results go bare again."""

    bus = MemoryBus()
    bare: list[Any] = []
    result = JobResult(job_id="r:a@1", status=JobStatus.SUCCEEDED)
    others = {
        "same group": lambda: bus.listen(SUBJECT_RESULT, "engine", lambda p: None),
        "wildcard": lambda: bus.subscribe(">"),
        "subject wildcard": lambda: bus.subscribe("sys.>"),
        "plain callback": lambda: bus.listen(SUBJECT_RESULT, "", lambda p: None),
    }
    async with (
        bus.listen(SUBJECT_RESULT, "engine", lambda p: None, on_payload=bare.append),
        bus.consume_jobs(["job.test"], capacity=1) as inbox,
    ):
        assert inbox.report_now is not None
        for name, other in others.items():
            async with other():
                assert not inbox.report_now(result), name
            assert inbox.report_now(result), name
        assert len(bare) == len(others)


async def test_a_bus_whose_listen_is_changed_gets_every_result_as_a_packet(
        store, payloads, save, monkeypatch):
    """A ``MemoryBus`` subclass that changes ``listen`` (to watch what its callbacks get)
    is never handed bare results: its callbacks see every result as a packet."""
    from contextlib import asynccontextmanager

    seen: list[BusPacket] = []

    class Watching(MemoryBus):
        @asynccontextmanager
        async def listen(self, subject: str, queue: str, callback: Any):  # type: ignore[override]
            def watched(packet: BusPacket) -> None:
                seen.append(packet)
                callback(packet)

            async with super().listen(subject, queue, watched):
                yield

    assert Watching.listens_for_payloads is False and MemoryBus.listens_for_payloads
    run = await _run_two_steps(store, Watching(), payloads, save)
    assert run.status == RunStatus.SUCCEEDED
    assert [p.payload.job_id for p in seen if isinstance(p.payload, JobResult)] == [
        f"{run.id}:a@1", f"{run.id}:b@1"]
