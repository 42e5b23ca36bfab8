"""What the in-memory hot path relies on, and what it relaxes (docs/decisions.md, *Engine
shell speed*): run mailboxes wake their task directly, results reach a run without a task
of the engine's in between, the memory store and bus are cancellation points that yield
only when they must wait, and the engine tunes the garbage collector unless told not to."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from test_engine_kit import WF, step

from cordtrio.backends.memory import MemoryBus, MemoryStore
from cordtrio.core.events import Start
from cordtrio.engine import envelopes, open_engine
from cordtrio.engine.envelopes import Envelope, Mailbox, Reply
from cordtrio.engine.gc_tuning import GEN0_THRESHOLD
from cordtrio.engine.ownership import SingleEngine
from cordtrio.model import RunStatus, StepRun, StepStatus, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges, own_call
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
)
from cordtrio.worker import open_worker


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_put_wakes_the_waiting_task_and_nothing_else() -> None:
    box = Mailbox()
    got: list[list[Envelope]] = []

    async def reader() -> None:
        await box.wait()
        got.append(box.take_all())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        first, second = Envelope(Start()), Envelope(Start())
        box.put(first)
        box.put(second)  # before the reader runs: one wake-up, one batch
    assert got == [[first, second]]
    assert box.close() == []
    with pytest.raises(trio.BrokenResourceError):
        box.put(first)


async def test_waiting_on_a_full_mailbox_or_a_set_reply_is_only_a_cancellation_point(
) -> None:
    box, reply = Mailbox(), Reply()
    box.put(Envelope(Start()))
    reply.set()
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    await box.wait()
    await reply.wait()
    trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 0  # no schedule point
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.wait()
    assert scope.cancelled_caught


async def test_every_wake_up_of_a_mailbox_or_a_reply_returns_none_as_trio_would() -> None:
    """A woken wait gets one shared outcome (``envelopes._WOKEN``), not a new
    ``outcome.Value(None)`` per wake-up: it gives what that ``Value`` gives, any number of
    times."""
    box, replies = Mailbox(), [Reply(), Reply()]
    woken: list[object] = []

    async def reader() -> None:
        for _ in range(3):
            woken.append(await box.wait())
            box.take_all()
        for reply in replies:
            woken.append(await reply.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
            box.put(Envelope(Start()))
        for reply in replies:
            await trio.testing.wait_all_tasks_blocked()
            reply.set()
    assert woken == [None] * 5
    value = outcome.Value(None)

    def gen() -> Generator[int, None, object]:
        got = yield 1
        return got

    for one in (envelopes._WOKEN, envelopes._WOKEN, value):
        g = gen()
        next(g)
        with pytest.raises(StopIteration) as stop:
            one.send(g)
        assert stop.value.value is None
    assert envelopes._WOKEN.unwrap() is None


async def test_a_reply_raises_what_interrupts_it() -> None:
    reply = Reply()

    async def interrupt() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert reply.waiting
        reply.interrupt(ValueError("stalled"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt)
        with pytest.raises(ValueError, match="stalled"):
            await reply.wait()
    assert not reply.is_set()


async def test_the_memory_store_is_a_cancellation_point_not_a_schedule_point() -> None:
    store = MemoryStore()
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    await store.list_run_ids_by_status("running")
    trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 0
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.list_run_ids_by_status("running")
    assert scope.cancelled_caught


async def test_a_single_engine_writes_its_own_memory_store_without_awaiting() -> None:
    """``ports.WritesNow``: the store's own write, never one reached through a wrapper or
    a subclass that changes the awaited write (to count, stall or fail it)."""
    store = MemoryStore()
    assert SingleEngine(store, None).save_changes_now == store.save_run_changes_now  # type: ignore[arg-type]

    class Counting(MemoryStore):
        async def save_run_changes(self, *args: Any, **kwargs: Any) -> None:
            await super().save_run_changes(*args, **kwargs)

    class Wrapper:
        def __init__(self, inner: MemoryStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    assert not Counting.writes_now
    for other in (Counting(), Wrapper(store)):
        assert SingleEngine(other, None).save_changes_now is None  # type: ignore[arg-type]


async def test_a_write_not_awaited_stores_what_the_awaited_one_stores() -> None:
    run = WorkflowRun(id="r", workflow_id="wf", status=RunStatus.RUNNING,
                      created_at=datetime(2026, 1, 1, tzinfo=UTC))
    stores = MemoryStore(), MemoryStore()
    for store in stores:
        await store.create_run(run)
    run.steps["a"] = StepRun("a", StepStatus.RUNNING, attempts=1, job_id="r:a@1")
    run.context["steps"] = {"a": {"result_ptr": "redis://res:r:a@1"}}
    changes = RunChanges(True, {"a"}, None, {"a"})
    event = TimelineEvent(run.created_at, "step_dispatched", "r", "wf", "a", "r:a@1",
                          "running", "", "", {"context_ptr": "redis://ctx:r:a@1"})
    await stores[0].save_run_changes(run, changes, [event])
    stores[1].save_run_changes_now(run, changes, [event])
    first, second = [await store.get_run("r") for store in stores]
    assert first.to_dict() == second.to_dict()
    assert first.steps["a"].job_id == "r:a@1"
    assert [e.to_dict() for e in await stores[0].list_timeline_events("r")] == [
        e.to_dict() for e in await stores[1].list_timeline_events("r")]


def _job(job_id: str) -> BusPacket:
    return BusPacket("t", "test", datetime.now(UTC), 1, JobRequest(job_id, "jobs"))


async def test_publish_now_delivers_a_job_or_a_result_as_publish_would() -> None:
    """``ports.PublishNow``: what cannot wait goes out at once; anything else is left to
    ``publish`` (False, nothing done)."""
    bus = MemoryBus(max_pending=1)
    seen: list[Any] = []
    result = BusPacket("t", "w", datetime.now(UTC), 1, JobResult("r:a@1", JobStatus.SUCCEEDED))
    assert not bus.publish_now(SUBJECT_RESULT, result)  # no listener: a subscriber's business
    async with bus.listen(SUBJECT_RESULT, "engines", seen.append), \
            bus.consume_jobs(["jobs"], capacity=1) as inbox:
        assert bus.publish_now(SUBJECT_RESULT, result) and seen == [result]
        assert bus.publish_now(SUBJECT_SUBMIT, _job("r:a@1"))
        assert inbox.receive_nowait().payload.job_id == "r:a@1"
        assert bus.publish_now(SUBJECT_SUBMIT, _job("r:b@1"))  # queued: no room yet
        assert bus.jobs.pending == 1
        assert not bus.publish_now(SUBJECT_SUBMIT, _job("r:c@1"))  # publish would wait
        assert bus.jobs.pending == 1 and not bus.jobs.owns("r:c@1")
        inbox.ack("r:a@1")
        assert inbox.receive_nowait().payload.job_id == "r:b@1"
        async with bus.subscribe(SUBJECT_SUBMIT) as tap:
            assert not bus.publish_now(SUBJECT_SUBMIT, _job("r:d@1"))  # the tap's copy
            assert not bus.jobs.owns("r:d@1")
            with pytest.raises(trio.WouldBlock):
                tap.receive_nowait()
    assert not bus.publish_now(SUBJECT_CANCEL, BusPacket(
        "t", "e", datetime.now(UTC), 1, JobCancel("r:b@1")))

    class Observed(MemoryBus):
        async def publish(self, subject: str, packet: BusPacket) -> None:
            await super().publish(subject, packet)

    assert MemoryBus.publishes_now and not Observed.publishes_now
    assert own_call(Observed(), "publishes_now", "publish_now") is None


async def test_a_publish_nobody_makes_wait_is_not_a_schedule_point() -> None:
    bus = MemoryBus()
    seen: list[Any] = []
    async with bus.listen(SUBJECT_RESULT, "engines", seen.append), \
            bus.subscribe(SUBJECT_RESULT) as channel:
        packet = BusPacket("t", "test", datetime.now(UTC), 1,
                           JobResult("r:a@1", JobStatus.SUCCEEDED))
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        await bus.publish(SUBJECT_RESULT, packet)
        trio.lowlevel.remove_instrument(steps)
        assert steps.steps == 0
        assert seen == [packet]  # the listener was called from within publish
        assert channel.receive_nowait() is packet  # the subscriber has its copy
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.publish(SUBJECT_RESULT, packet)
        assert scope.cancelled_caught and seen == [packet]  # nothing delivered
    await bus.publish(SUBJECT_RESULT, packet)  # the listener left with its block
    assert seen == [packet]


async def test_a_failing_listener_does_not_fail_the_publisher(caplog) -> None:
    bus = MemoryBus()

    def broken(packet: BusPacket) -> None:
        raise RuntimeError("listener bug")

    async with bus.listen(SUBJECT_RESULT, "", broken):
        await bus.publish(SUBJECT_RESULT, BusPacket("t", "test", datetime.now(UTC), 1,
                                                    JobResult("r:a@1", JobStatus.SUCCEEDED)))
    assert "a bus listener failed" in caplog.text


async def echo(job: Any) -> dict[str, Any]:
    return {"ok": True}


async def test_one_step_costs_two_task_switches_on_the_memory_backends(store, payloads,
                                                                       save) -> None:
    """The worker's slot and the run's task; the engine's result routing runs inside the
    worker's publish. (Counted on 20 steps, with slack for the submit and the wait.)"""
    await save(*[step(f"s{i}", depends_on=[f"s{i - 1}"] if i else []) for i in range(20)])
    bus = MemoryBus()
    async with open_engine(store, bus, payloads=payloads) as engine, \
            open_worker(bus, payloads, {"job.test": echo}):
        run_id = await engine.submit(WF)
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        await engine.wait_run(run_id)
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps <= 2 * 20 + 4


async def test_the_engine_tunes_the_collector_while_open_unless_told_not_to(store, bus):
    before = gc.get_threshold()
    async with open_engine(store, bus):
        assert gc.get_threshold()[0] == max(GEN0_THRESHOLD, before[0])
    assert gc.get_threshold() == before
    async with open_engine(store, bus, tune_gc=False):
        assert gc.get_threshold() == before


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_garbage_from_before_an_engine_is_still_collected_while_it_is_open(
        store, bus):
    """What was left before an engine opened (an earlier engine's cycles, in a process
    that opens many) is not put out of the collector's reach: a process opening engine
    after engine does not grow by their leftovers."""
    for _ in range(3):
        leftover = _Cycle()
        gone = weakref.ref(leftover)
        del leftover  # a cycle: only the cyclic collector frees it
        async with open_engine(store, bus):
            gc.collect()
            assert gone() is None


async def test_the_alarm_pokes_each_mailbox_at_its_deadline(autojump_clock) -> None:
    from cordtrio.engine.timers import Alarm

    alarm, early, late = Alarm(), Mailbox(), Mailbox()
    woken: list[tuple[str, float]] = []

    async def waiter(name: str, box: Mailbox) -> None:
        await box.wait()
        woken.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        await nursery.start(alarm.run)
        start = trio.current_time()
        nursery.start_soon(waiter, "late", late)
        nursery.start_soon(waiter, "early", early)
        await trio.testing.wait_all_tasks_blocked()
        alarm.set(start + 10, late)
        alarm.set(start + 5, early)  # earlier than what the alarm sleeps until
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert woken == [("early", start + 5), ("late", start + 10)]


def test_only_multi_engine_ownership_queues_commands() -> None:
    """A run task skips acknowledging batches only for an ownership that queues no
    commands (an engine alone on its store)."""
    from cordtrio.engine.leases import LeaseKeeper
    from cordtrio.engine.ownership import SingleEngine

    assert not SingleEngine.queues_commands
    assert LeaseKeeper.queues_commands


async def test_every_run_task_has_a_cancel_scope_of_its_own(store) -> None:
    """A run's cancel scope is its cancellation in the shell, in every mode (an engine alone
    on its store too)."""
    from test_run_host import Host

    from cordtrio.backends.memory import MemoryBus
    from cordtrio.engine.run_task import RunTask

    first = RunTask(Host(store, MemoryBus()), "r-1")
    second = RunTask(Host(store, MemoryBus()), "r-2")
    assert isinstance(first.scope, trio.CancelScope)
    assert first.scope is not second.scope


async def test_a_run_task_stops_at_once_when_its_lease_is_lost(store) -> None:
    """``lease_lost`` cancels the task's scope: a task parked on its mailbox ends."""
    from test_run_host import Host

    from cordtrio.backends.memory import MemoryBus
    from cordtrio.engine.run_task import RunTask

    host = Host(store, MemoryBus())
    task = RunTask(host, "r-missing")
    box = task.mailbox
    async with trio.open_nursery() as nursery:
        async def parked() -> None:
            with task.scope:
                await box.wait()
        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        task.lease_lost()
    assert task.lost and task.scope.cancelled_caught


async def test_a_result_reaches_its_run_bare_and_leaves_it_in_an_envelope(store) -> None:
    """A job result goes into the run's mailbox bare (the ``JobResult`` itself, or a bare
    event: nobody waits for it); what the task hands on (forwarding to another engine) is
    an envelope of a ``ResultReceived`` again."""
    from test_run_host import Host

    from cordtrio.backends.memory import MemoryBus
    from cordtrio.core.events import ResultReceived
    from cordtrio.engine.run_task import RunTask

    task = RunTask(Host(store, MemoryBus()), "r1")
    bare = JobResult(job_id="r1:a@1", status=JobStatus.SUCCEEDED)
    event = ResultReceived(JobResult(job_id="r1:b@1", status=JobStatus.SUCCEEDED))
    task.mailbox.put(bare)
    task.mailbox.put(event)
    task.mailbox.put(Envelope(Start()))
    left = task.take_leftovers()
    assert [type(e) for e in left] == [Envelope, Envelope, Envelope]
    assert left[0].event == ResultReceived(bare) and left[0].event.result is bare
    assert left[1].event is event
    assert all(e.done is None and not e.drain for e in left[:2])


async def test_an_interrupted_batchs_bare_job_results_are_handed_on_as_events(store) -> None:
    """A batch cut short (lease lost, engine closing) is handed on from ``in_flight``: its
    bare job results in envelopes of ``ResultReceived``, as forwarding expects."""
    from test_run_host import Host

    from cordtrio.backends.memory import MemoryBus
    from cordtrio.core.events import ResultReceived
    from cordtrio.engine.run_task import RunTask

    task = RunTask(Host(store, MemoryBus()), "r1")
    bare = JobResult(job_id="r1:a@1", status=JobStatus.SUCCEEDED)
    start = Envelope(Start())
    task._batch = [bare, start]
    unapplied = task.in_flight
    assert unapplied[1] is start and unapplied[0].event == ResultReceived(bare)
    assert task.in_flight[0] is unapplied[0]  # wrapped once


async def test_an_engines_hooks_are_fixed_for_its_life() -> None:
    """Every run task holds the hooks given to ``open_engine``: they can be read, not
    replaced (a replacement would be silently ignored by the tasks already wired)."""
    def dispatched(run_id: str, step_id: str, job_id: str) -> None:
        pass

    async with open_engine(MemoryStore(), MemoryBus(), on_step_dispatched=dispatched) as engine:
        assert engine.on_step_dispatched is dispatched
        assert engine.on_step_finished is None
        with pytest.raises(AttributeError):
            engine.on_step_dispatched = None  # type: ignore[misc]


async def test_a_waiting_run_task_keeps_nothing_of_its_last_batch_alive(store, payloads,
                                                                        save) -> None:
    """A run waiting on a long job: its task keeps no effect of the batch that started the
    job (a job's ``Dispatch``: its request and rendered input), and the engine keeps no
    output it loaded for a result (the last one may be large)."""
    from cordtrio.core.events import Dispatch
    from cordtrio.protocol import JobResult

    await save(step("a"), step("b", depends_on=["a"], topic="job.slow"))
    bus = MemoryBus()
    big = {"blob": "x" * 100_000}

    async def first(job: Any) -> dict[str, Any]:
        return big

    async def slow(job: Any) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with open_engine(store, bus, payloads=payloads) as engine, \
            open_worker(bus, payloads, {"job.test": first, "job.slow": slow}):
        run_id = await engine.submit(WF)
        await trio.testing.wait_all_tasks_blocked()
        run = await store.get_run(run_id)
        assert run.steps["b"].status is StepStatus.RUNNING  # waiting on the slow job
        objects = gc.get_objects()
        kept = [o for o in objects if type(o) is Dispatch and o.job_id.startswith(run_id)]
        assert kept == []
        # nor the job result it applied last (its last batch): the worker's slot that
        # made it may still hold it, nothing else
        results = [o for o in objects if type(o) is JobResult and o.job_id.startswith(run_id)]
        holders = [r for o in results for r in gc.get_referrers(o)
                   if r is not objects and r is not results and not (
                       getattr(r, "cr_code", None) is not None
                       and r.cr_code.co_filename.endswith("worker.py"))]
        assert holders == []
        del objects, results, holders
        wiring = engine._wiring
        assert wiring is not None and wiring.output.value is None
        await engine.cancel_run(run_id)
