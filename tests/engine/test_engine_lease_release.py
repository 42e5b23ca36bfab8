"""Multi-engine mode: a finished run's last write releases its lease (``RunChanges.
release_lease``), so the task that lets the run go sends no release of its own. The keeper
does not renew a lease once the write releasing it is issued (a renewal would find it gone
and stop the task while it carries out what follows the write), and what reaches the task
after that write, and makes it write again, is refused and handed on as for a lost lease:
a new task takes the free lease and applies it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_engine_kit import LEASE_TTL as TTL
from test_engine_kit import WF, fail, ok, step, workflow

from cordtrio.backends.memory import MemoryBus, MemoryStore
from cordtrio.core.events import CancelRun, ResultReceived
from cordtrio.engine import open_engine
from cordtrio.engine import run_task as run_task_module
from cordtrio.engine.envelopes import Envelope, Redirect, Reply
from cordtrio.errors import StoreError
from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.ports import RunChanges
from cordtrio.protocol import SUBJECT_CANCEL
from cordtrio.wire_commands import encode_command


class ReleaseCounting(MemoryStore):
    """Counts the lease releases of their own, and the writes that release the lease."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []
        self.releasing_writes: list[str] = []

    async def release_lease(self, run_id: str, owner: str) -> None:
        self.released.append(run_id)
        await super().release_lease(run_id, owner)

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Any = ()) -> None:
        if changes.release_lease:
            self.releasing_writes.append(run.id)
        await super().save_run_changes(run, changes, timeline)


async def test_a_finished_runs_last_write_releases_its_lease(
        bus, payloads, clock, autojump_clock) -> None:
    store = ReleaseCounting()
    await store.save_workflow(workflow(step("a"), step("b", depends_on=["a"])))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        await a.handle_job_result(ok(f"{run_id}:a@1"))
        assert store.releasing_writes == [] and await store.lease_owner(run_id) == "A"
        await a.handle_job_result(ok(f"{run_id}:b@1"))
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()
        assert a.active_runs == 0 and not a.ownership.releasing
        assert store.releasing_writes == [run_id]  # the terminal write only
        assert store.released == []  # no release of its own
        assert await store.lease_owner(run_id) is None
        # a task that loads the finished run (a late command) writes nothing: it releases
        await a.cancel_run(run_id)
        await trio.testing.wait_all_tasks_blocked()
        assert store.released == [run_id] and await store.lease_owner(run_id) is None


async def test_a_last_batch_of_inbox_commands_is_acknowledged_before_the_release(
        bus, payloads, clock, autojump_clock) -> None:
    """The result that ends the run came through the run's inbox (forwarded by another
    engine): its acknowledgement, after the write, needs the lease, so that write keeps it
    and the task releases it as it lets go."""
    store = ReleaseCounting()
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        assert await store.push_command(
            run_id, encode_command(ResultReceived(ok(f"{run_id}:a@1")))) == "A"
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()
        assert store.releasing_writes == [] and store.released == [run_id]
        assert await store.runs_with_commands() == []  # acknowledged
        assert await store.lease_owner(run_id) is None and a.active_runs == 0


async def test_a_last_write_with_a_job_to_publish_after_it_keeps_the_lease(
        bus, payloads, clock, autojump_clock) -> None:
    """One batch: a child's success dispatches the next child, then a sibling's failure
    ends the run (the new job cancelled with it). The job is published after the write,
    under the lease: that write keeps it, and the task releases it as it lets go."""
    store = ReleaseCounting()
    await store.save_workflow(workflow(step("each", for_each="input.items", max_parallel=2)))
    published: list[tuple[str, str | None]] = []

    def on_dispatched(run_id: str, step_id: str, job_id: str) -> None:
        published.append((job_id, store._lease_book.holder(run_id)))

    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True,
                           on_step_dispatched=on_dispatched) as a:
        run_id = await a.submit(WF, {"items": [1, 2, 3]})
        a.deliver(run_id, ok(f"{run_id}:each[0]@1"))  # (no checkpoint: one batch)
        a.deliver(run_id, fail(f"{run_id}:each[1]@1"))
        assert (await a.wait_run(run_id)).status == RunStatus.FAILED
        await trio.testing.wait_all_tasks_blocked()
        assert published[-1] == (f"{run_id}:each[2]@1", "A")
        assert store.releasing_writes == [] and store.released == [run_id]
        assert await store.lease_owner(run_id) is None and a.active_runs == 0


class SlowCancels(MemoryBus):
    """A bus whose job cancels take ``delay`` seconds to go out."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.cancelled: list[str] = []

    async def publish(self, subject: str, packet: Any) -> None:
        if subject == SUBJECT_CANCEL:
            await trio.sleep(self.delay)
            self.cancelled.append(packet.payload.job_id)
        await super().publish(subject, packet)


async def test_renewals_leave_a_lease_its_write_released_while_the_task_goes_on(
        payloads, clock, autojump_clock) -> None:
    """The failure that ends the run cancels the other step's job after the write, slowly:
    renewals pass meanwhile, and the task is not stopped (the cancel goes out, the task
    ends as it should and sends no release)."""
    store = ReleaseCounting()
    bus = SlowCancels(delay=TTL)
    await store.save_workflow(workflow(step("a"), step("b")))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        other = await a.submit(WF)  # held meanwhile: renewed
        renewals: list[list[str]] = []
        real_renew = store.renew_leases

        async def renewals_seen(owner: str, run_ids: Any, ttl: float) -> set[str]:
            renewals.append(list(run_ids))
            return await real_renew(owner, run_ids, ttl)

        store.renew_leases = renewals_seen  # type: ignore[method-assign]
        started = trio.current_time()
        await a.handle_job_result(fail(f"{run_id}:a@1"))  # (applied: b's job cancelled)
        assert trio.current_time() - started >= TTL
        await trio.testing.wait_all_tasks_blocked()
        assert store.releasing_writes == [run_id]
        assert len(renewals) >= 2 and all(ids == [other] for ids in renewals)
        assert bus.cancelled == [f"{run_id}:b@1"]
        assert a.active_runs == 1 and store.released == []  # (the other run's)
        assert (await a.wait_run(run_id)).status == RunStatus.FAILED


class LostReply(ReleaseCounting):
    """The first write that releases the lease is applied, then its reply is lost (after
    ``delay`` seconds): the caller cannot tell it was written."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.lost = False
        self.acquired: list[str] = []

    async def save_run_changes(self, run: WorkflowRun, changes: RunChanges,
                               timeline: Any = ()) -> None:
        await super().save_run_changes(run, changes, timeline)
        if changes.release_lease and not self.lost:
            self.lost = True
            await trio.sleep(self.delay)
            raise StoreError("connection lost before the reply")

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        self.acquired.append(run_id)
        return await super().acquire_lease(run_id, owner, ttl)


@pytest.mark.parametrize("late", [False, True], ids=["soon", "late"])
async def test_a_last_write_retried_after_its_lost_reply(
        payloads, clock, autojump_clock, caplog, late: bool) -> None:
    """The write that ends the run was applied (the lease released) but its reply lost; the
    task writes it again. Soon after (the lease cannot have expired meanwhile), the task
    takes the free lease again, writes, and goes on (b's job is cancelled). Later, it may
    have expired and changed hands: the write is refused as for a lost lease (the run is
    finished in the store all the same)."""
    store = LostReply(delay=TTL if late else 0.0)
    bus = SlowCancels(delay=0.0)
    await store.save_workflow(workflow(step("a"), step("b")))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        store.acquired.clear()
        await a.handle_job_result(fail(f"{run_id}:a@1"))
        assert (await a.wait_run(run_id)).status == RunStatus.FAILED
        await trio.testing.wait_all_tasks_blocked()
        assert store.releasing_writes == [run_id] * 2
        assert await store.lease_owner(run_id) is None and a.active_runs == 0
        assert not a.ownership.held and not a.ownership.releasing
        refused = "not written; another engine drives it now" in caplog.text
        if late:  # refused; a new task took the run (the result handed on), found it done
            assert refused and store.acquired == [run_id] and bus.cancelled == []
        else:
            assert not refused
            assert store.acquired == [run_id] and bus.cancelled == [f"{run_id}:b@1"]
            assert store.released == []


@pytest.fixture
def late_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command applied to a finished run writes it again (the core writes nothing then:
    this stands for any write after the last)."""
    real_in, real = run_task_module.decide_in, run_task_module.decide

    def writing(outcome: Any, finished: bool, event: Any) -> Any:
        if finished and isinstance(event, CancelRun):
            outcome.changes.header = True
        return outcome

    def decide_in(tx: Any, event: Any) -> Any:  # a batch's first event
        return writing(real_in(tx, event), tx.run.status.is_terminal, event)

    def decide(plan: Any, state: Any, event: Any, now: Any) -> Any:  # the others
        return writing(real(plan, state, event, now), state.run.status.is_terminal, event)

    monkeypatch.setattr(run_task_module, "decide_in", decide_in)
    monkeypatch.setattr(run_task_module, "decide", decide)


async def test_a_write_after_the_last_is_refused_and_handed_to_a_new_task(
        bus, payloads, clock, autojump_clock, late_writes) -> None:
    """A command and a job result reach the task after the write that released the lease:
    its write is refused, the caller is told to deliver again, the result goes to the
    run's inbox; a new task takes the free lease and applies both, and lets go."""
    store = ReleaseCounting()
    await store.save_workflow(workflow(step("a")))
    late = Envelope(CancelRun(), done=Reply())
    engines: list[Any] = []

    def on_finished(run_id: str, step_id: str, status: Any) -> None:
        # after the write that ended the run, before its task ends
        if late.done is not None and not engines[1:]:
            assert store.releasing_writes == [run_id]
            engines.append(run_id)
            engines[0].deliver(run_id, late)
            engines[0].deliver(run_id, ok(f"{run_id}:a@1"))  # a duplicate, from the bus

    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True,
                           on_step_finished=on_finished) as a:
        engines.append(a)
        run_id = await a.submit(WF)
        await a.handle_job_result(ok(f"{run_id}:a@1"))
        with trio.fail_after(TTL):
            await late.done.wait()  # type: ignore[union-attr]
        assert isinstance(late.error, Redirect)  # the caller delivers it again
        await a.cancel_run(run_id)  # (as ``_call`` does): a new task applies it
        await trio.testing.wait_all_tasks_blocked()
        # the write that ended the run, the refused one; the new task's took the result
        # from the inbox: it keeps the lease for the acknowledgement, then releases it
        # (the refused task releases too, as any task that did not end as it should: the
        # lease is not its any more, nothing happens)
        assert store.releasing_writes == [run_id, run_id]
        assert store.released == [run_id, run_id]
        assert await store.runs_with_commands() == []  # the result applied, acknowledged
        assert a.active_runs == 0 and not a.ownership.releasing and not a.ownership.held
        assert await store.lease_owner(run_id) is None
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED


async def test_a_command_queued_after_the_last_write_is_taken_under_the_lease_again(
        payloads, clock, autojump_clock, caplog) -> None:
    """The run's last write released the lease; while its task still publishes a job
    cancel, a command lands in the run's inbox and wakes the task: it takes the lease
    again before it takes the command (taking it is a store write), applies and
    acknowledges it, and lets go — nothing left queued, no lease reported lost."""
    store = ReleaseCounting()
    await store.save_workflow(workflow(step("a"), step("b")))
    cancelling = trio.Event()

    class SlowCancels(MemoryBus):
        async def publish(self, subject: str, packet: Any) -> None:
            if subject == SUBJECT_CANCEL:
                cancelling.set()
                await trio.sleep(1.0)
            await super().publish(subject, packet)

    async with open_engine(store, SlowCancels(), payloads=payloads, clock=clock,
                           engine_id="A", lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)

        async def late_command() -> None:
            await cancelling.wait()  # after the releasing write, before the task ends
            assert store.releasing_writes == [run_id]
            assert await store.lease_owner(run_id) is None
            await store.push_command(run_id, encode_command(CancelRun()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_command)
            await a.handle_job_result(fail(f"{run_id}:a@1"))
        await trio.sleep(TTL / 4)  # well before any takeover scan
        assert await store.runs_with_commands() == []
        assert a.active_runs == 0 and not a.ownership.releasing and not a.ownership.held
        assert await store.lease_owner(run_id) is None
        assert "lease lost" not in caplog.text
        assert (await a.wait_run(run_id)).status == RunStatus.FAILED
