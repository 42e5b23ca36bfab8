"""A succeeded result's output read before its run task wakes (``Engine._read_output``):
over a payload store whose result reads can answer a callback (``get_result_then``, the
Redis store's batched ``GET``), the result waits in the run's mailbox as a ``ResultRead``
and the read's reply wakes the task with both. Every way the early read can fail ends as
the task reading the output itself, as for a store without that call; results and later
commands are applied in the order they came; a result handed on unapplied is the bare
result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from test_engine_kit import WF, Tap, ok, put_output, step, tapping

from cordtrio.backends.memory import MemoryBus, MemoryStore
from cordtrio.core.events import ResultReceived
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.engine.envelopes import Envelope, Mailbox, ResultRead, enveloped
from cordtrio.errors import NotFoundError
from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.payloads import RESULT_PREFIX, check_payload_key
from cordtrio.protocol import SUBJECT_RESULT, SUBJECT_SUBMIT, BusPacket, JobResult, JobStatus


class DeferredPayloads:
    """A bytes payload store whose callback reads the test answers (``pending``); the
    awaited reads are counted (``reads``). ``reads_results_then=False``: a store without
    the callback read (the general path)."""

    def __init__(self, *, then: bool = True, refuse: bool = False) -> None:
        self.reads_results_then = then
        self.refuse = refuse  # get_result_then answers False (not batching)
        self.data: dict[str, bytes] = {}
        self.pending: list[tuple[str, Callable[[bytes | None], None]]] = []
        self.reads = 0

    async def put_context(self, key: str, data: bytes) -> None:
        self.data[key] = bytes(data)

    async def get_context(self, key: str) -> bytes:
        return self.data[key]

    async def put_result(self, key: str, data: bytes) -> None:
        self.data[key] = bytes(data)

    async def get_result(self, key: str) -> bytes:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        if key not in self.data:
            raise NotFoundError(f"payload {key!r} not found")
        return self.data[key]

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def get_result_then(self, key: str, done: Callable[[bytes | None], None]) -> bool:
        key = check_payload_key(key, RESULT_PREFIX)  # (as every payload store checks it)
        if self.refuse:
            return False
        self.pending.append((key, done))
        return True

    def answer(self, fail: bool = False) -> None:
        """Answer the oldest pending read (None: it failed)."""
        key, done = self.pending.pop(0)
        done(None if fail else self.data.get(key))


@dataclass
class _OneJob:
    """An engine over memory backends and ``payloads``, with one single-step run whose job
    has been dispatched (its id ``job_id``)."""

    store: MemoryStore
    bus: MemoryBus
    engine: Any
    run_id: str
    job_id: str

    async def succeed(self, ptr: Any) -> None:
        """Publish the job's success with the result pointer ``ptr``."""
        await _result(self.bus, ok(self.job_id, ptr))


@asynccontextmanager
async def _one_job(payloads: DeferredPayloads) -> AsyncIterator[_OneJob]:
    store, bus = MemoryStore(), MemoryBus()
    async with open_engine(store, bus, payloads=payloads,  # type: ignore[arg-type]
                           clock=TrioWallClock(), new_id=lambda: "r1") as engine, \
            tapping(bus, SUBJECT_SUBMIT) as tap:
        yield _OneJob(store, bus, engine, *await _one_step_run(store, bus, engine, tap))


async def _one_step_run(store: MemoryStore, bus: MemoryBus, engine: Any, tap: Tap
                        ) -> tuple[str, str]:
    await store.save_workflow(_wf())
    run_id = await engine.submit(WF)
    await trio.testing.wait_all_tasks_blocked()
    (job_id,) = tap.job_ids
    return run_id, job_id


def _wf() -> Any:
    from test_engine_kit import workflow
    return workflow(step("a"))


async def _result(bus: MemoryBus, result: JobResult) -> None:
    await bus.publish(SUBJECT_RESULT, BusPacket(payload=result))
    await trio.testing.wait_all_tasks_blocked()


async def _drive(payloads: DeferredPayloads, ptr_of: Callable[[str, str], Any],
                 answer: bool | None) -> tuple[WorkflowRun, DeferredPayloads]:
    """One single-step run whose job succeeds with the pointer ``ptr_of(job_id, ptr)``;
    ``answer``: answer the early read (True), fail it (False), or expect none (None)."""
    with trio.fail_after(10):
        async with _one_job(payloads) as one:
            ptr = await put_output(payloads, one.job_id, {"x": 1})  # type: ignore[arg-type]
            await one.succeed(ptr_of(one.job_id, ptr))
            if answer is None:
                assert payloads.pending == []
            else:
                assert len(payloads.pending) == 1 and payloads.reads == 0
                payloads.answer(fail=not answer)
            await trio.testing.wait_all_tasks_blocked()
            if (await one.store.get_run(one.run_id)).status.is_terminal:
                # the task's run: outputs
                return await one.engine.wait_run(one.run_id), payloads
            return await one.store.get_run(one.run_id), payloads


def _out(run: WorkflowRun) -> Any:
    """The output step ``a`` recorded (its step run keeps the pointer)."""
    return run.context.get("steps", {}).get("a", {}).get("output")


def _same_step(a: WorkflowRun, b: WorkflowRun) -> None:
    sa, sb = a.steps["a"], b.steps["a"]
    entry_a = a.context.get("steps", {}).get("a")
    entry_b = b.context.get("steps", {}).get("a")
    assert (a.status, sa.status, sa.error, entry_a) == (b.status, sb.status, sb.error,
                                                        entry_b)


async def test_a_result_wakes_its_run_with_its_output_read_before() -> None:
    run, payloads = await _drive(DeferredPayloads(), lambda job, ptr: ptr, True)
    assert run.status == RunStatus.SUCCEEDED and _out(run) == {"x": 1}
    assert payloads.reads == 0  # the task never read it itself
    general, plain = await _drive(DeferredPayloads(then=False), lambda job, ptr: ptr, None)
    assert plain.reads == 1
    _same_step(run, general)


async def test_a_failed_early_read_is_read_again_by_the_task() -> None:
    run, payloads = await _drive(DeferredPayloads(), lambda job, ptr: ptr, False)
    assert run.status == RunStatus.SUCCEEDED and _out(run) == {"x": 1}
    assert payloads.reads == 1


async def test_an_early_read_that_cannot_start_is_read_by_the_task() -> None:
    run, payloads = await _drive(DeferredPayloads(refuse=True), lambda job, ptr: ptr, None)
    assert run.status == RunStatus.SUCCEEDED and _out(run) == {"x": 1}
    assert payloads.reads == 1


async def test_a_missing_payload_read_early_ends_as_the_general_path_does() -> None:
    missing = lambda job, ptr: ptr + "-gone"  # noqa: E731
    run, payloads = await _drive(DeferredPayloads(), missing, False)
    general, _ = await _drive(DeferredPayloads(then=False), missing, None)
    _same_step(run, general)
    assert payloads.reads == 1  # the task's own read, for its error
    assert _out(run) != {"x": 1}


async def test_bad_pointers_are_not_read_early_and_end_as_the_general_path_does() -> None:
    for bad in ("secret:token", "res:", ["res:x"], {"k": 1}, 12):
        run, payloads = await _drive(DeferredPayloads(), lambda job, ptr, b=bad: b, None)
        general, _ = await _drive(DeferredPayloads(then=False), lambda job, ptr, b=bad: b,
                                  None)
        _same_step(run, general)
        assert payloads.reads == 0  # refused unread, as the task refuses it


async def test_a_command_after_a_result_being_read_is_applied_after_it() -> None:
    """A cancel that arrives while the result's read is pending waits behind the result,
    as it would behind a bare result: the run succeeds (the cancel finds it finished)."""
    payloads = DeferredPayloads()
    with trio.fail_after(10):
        async with _one_job(payloads) as one:
            ptr = await put_output(payloads, one.job_id, {"x": 1})  # type: ignore[arg-type]
            await one.succeed(ptr)
            cancelled = trio.Event()

            async def cancel() -> None:
                await one.engine.cancel_run(one.run_id)
                cancelled.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel)
                await trio.testing.wait_all_tasks_blocked()
                assert not cancelled.is_set()  # behind the result being read
                assert (await one.store.get_run(one.run_id)).status == RunStatus.RUNNING
                payloads.answer()
            run = await one.engine.wait_run(one.run_id)
            assert run.status == RunStatus.SUCCEEDED and _out(run) == {"x": 1}


async def test_an_engine_closes_with_a_read_pending_and_its_late_reply_is_harmless() -> None:
    """The engine closes (no task of its own waits on the read: nothing to cancel), the
    result stays unapplied (the run is still running in the store, for the next engine to
    recover), and the read's reply coming afterwards wakes nobody and raises nothing."""
    payloads = DeferredPayloads()
    with trio.fail_after(10):
        async with _one_job(payloads) as one:
            ptr = await put_output(payloads, one.job_id, {"x": 1})  # type: ignore[arg-type]
            await one.succeed(ptr)
            assert len(payloads.pending) == 1
        payloads.answer()  # a reply after the engine closed: nobody to wake, no error
    assert (await one.store.get_run(one.run_id)).status == RunStatus.RUNNING  # not applied


async def test_a_result_being_read_is_handed_on_as_the_bare_result() -> None:
    """A task that stops with a ``ResultRead`` unapplied (its lease lost, the engine
    closing: ``in_flight``; never taken: ``take_leftovers``) hands on the bare result, for
    whoever drives the run to read; a reply coming later changes nothing."""
    from test_run_host import Host

    from cordtrio.engine.run_task import RunTask

    store = MemoryStore()
    task = RunTask(Host(store, MemoryBus()), "r1")
    result = JobResult(job_id="r1:a@1", status=JobStatus.SUCCEEDED, result_ptr="res:r1:a@1")
    taken = ResultRead(result, task.mailbox)
    task._batch = [taken]
    (unapplied,) = task.in_flight
    assert unapplied.event == ResultReceived(result) and unapplied.event.output is None
    waiting = ResultRead(result, task.mailbox)
    task.mailbox.hold(waiting)
    (left,) = task.take_leftovers()
    assert isinstance(left, Envelope) and left.event == ResultReceived(result)
    waiting.loaded(b'{"x": 1}')  # the read's late reply: a closed mailbox, no reader
    taken.loaded(None)
    assert enveloped(waiting).event == ResultReceived(result)


async def test_a_task_taking_a_result_before_its_read_waits_for_it() -> None:
    mailbox = Mailbox()
    read = ResultRead(JobResult(job_id="r:a@1", status=JobStatus.SUCCEEDED), mailbox)
    mailbox.hold(read)
    assert mailbox.items == [read]  # held: nobody woken
    got: list[Any] = []

    async def take() -> None:
        await read.wait()
        got.append(read.output)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        read.loaded(b'"text"')
    assert got[0].value == "text" and got[0].loaded
    read.loaded(b"1")  # a second reply is ignored
    assert read.output is not None and read.output.value == "text"
    await read.wait()  # done: no wait


async def test_a_run_losing_its_lease_with_a_read_pending_hands_the_result_on() -> None:
    """Multi-engine: the task waits for a result's read (a cancel woke it) and loses its
    lease: the result is handed on bare with the batch (``in_flight``), the cancel's caller
    retries, and whoever drives the run next applies the result first, reading its output
    itself; the early read's late reply changes nothing."""
    store, bus, payloads = MemoryStore(), MemoryBus(), DeferredPayloads()
    with trio.fail_after(10):
        async with open_engine(store, bus, payloads=payloads,  # type: ignore[arg-type]
                               clock=TrioWallClock(), new_id=lambda: "r1",
                               engine_id="e1", recover=False) as engine, \
                tapping(bus, SUBJECT_SUBMIT) as tap:
            assert engine.leases is not None
            run_id, job_id = await _one_step_run(store, bus, engine, tap)
            ptr = await put_output(payloads, job_id, {"x": 1})  # type: ignore[arg-type]
            await _result(bus, ok(job_id, ptr))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.cancel_run, run_id)
                await trio.testing.wait_all_tasks_blocked()
                task = engine._runs[run_id]
                assert payloads.reads == 0 and len(payloads.pending) == 1
                task.lease_lost()
            payloads.answer()  # the early read's reply, after the task let go
            run = await engine.wait_run(run_id, poll_interval=0.01)
    assert run.status == RunStatus.SUCCEEDED and _out(run) == {"x": 1}
    assert payloads.reads == 1  # read by the task that applied the handed-on result
