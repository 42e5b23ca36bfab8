"""Several engines over one store (multi-engine mode, ``cordtrio.engine.leases``), on the
memory backends and Trio's autojump clock: each run is driven by exactly one engine, results
and commands reaching another engine are forwarded, a dead engine's runs are taken over
after the lease TTL, a stopped engine's at once, and a lost lease stops the run's task."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import trio
from test_engine_kit import LEASE_TTL as TTL
from test_engine_kit import WF, ok, start_engine, step, workflow

from cordtrio import Job, open_worker
from cordtrio.backends.memory import MemoryStore
from cordtrio.client import Client
from cordtrio.engine import open_engine
from cordtrio.errors import InvalidStateError, NotFoundError, ValidationError
from cordtrio.model import RunStatus, StepStatus, StepType
from cordtrio.ports import RunLeases


class CountingStore(MemoryStore):
    """Counts the commands forwarded through the store."""

    def __init__(self) -> None:
        super().__init__()
        self.forwarded: Counter[str] = Counter()

    async def push_command(self, run_id: str, data: bytes) -> str | None:
        self.forwarded[run_id] += 1
        return await super().push_command(run_id, data)


class Dispatches:
    """Every job id any engine dispatched, with the engine that did."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[str]] = {}

    def hook(self, engine_id: str) -> Any:
        def on_dispatched(run_id: str, step_id: str, job_id: str) -> None:
            self.by_job.setdefault(job_id, []).append(engine_id)
        return on_dispatched

    def doubles(self) -> dict[str, list[str]]:
        return {job: who for job, who in self.by_job.items() if len(who) > 1}


async def echo(job: Job) -> dict[str, Any]:
    await trio.sleep(0.5)
    return {"n": job.input.get("n", 0) if isinstance(job.input, dict) else 0}


async def test_the_memory_store_offers_leases_on_request(store, bus) -> None:
    assert isinstance(store, RunLeases)
    async with open_engine(store, bus) as alone:
        assert alone.leases is None  # one engine per memory store unless asked
    async with open_engine(store, bus, multi_engine=True) as shared:
        assert shared.leases is not None and shared.leases.owner == shared.engine_id
    async with open_engine(store, bus, engine_id="E") as named:  # naming it asks too
        assert named.leases is not None and named.leases.owner == "E"
    async with open_engine(store, bus, engine_id="E", multi_engine=False) as single:
        assert single.leases is None


async def test_multi_engine_needs_a_store_with_leases(bus) -> None:
    class Plain:
        pass

    with pytest.raises(ValidationError, match="RunLeases"):
        async with open_engine(Plain(), bus, multi_engine=True):  # type: ignore[arg-type]
            pass


async def test_two_engines_drive_each_run_once(bus, payloads, clock, autojump_clock) -> None:
    store = CountingStore()
    await store.save_workflow(workflow(
        step("a"), step("b", depends_on=["a"]),
        step("each", depends_on=["a"], for_each="input.items", max_parallel=2),
        step("c", depends_on=["b", "each"])))
    seen = Dispatches()
    async with trio.open_nursery() as nursery, \
            open_worker(bus, payloads, {"job.test": echo}, max_concurrency=64):
        a, _ = await start_engine(store, bus, payloads, clock, "A", nursery,
                                  on_step_dispatched=seen.hook("A"))
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery,
                                  on_step_dispatched=seen.hook("B"))
        ids = []
        for i in range(100):
            engine = a if i % 2 == 0 else b
            ids.append(await engine.submit(WF, {"items": [1, 2, 3]}))
        with trio.fail_after(600):
            runs = [await (a if i % 3 else b).wait_run(rid) for i, rid in enumerate(ids)]
        nursery.cancel_scope.cancel()
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 100
    assert seen.doubles() == {}
    assert len(seen.by_job) == 100 * 6  # a, b, 3 children, c: each attempt exactly once
    engines_per_run = {rid: {who for job, (who,) in seen.by_job.items()
                             if job.startswith(rid + ":")} for rid in ids}
    assert all(len(who) == 1 for who in engines_per_run.values())
    assert sum(store.forwarded.values()) > 0  # results did land at the other engine


async def test_a_dead_engines_runs_are_taken_over_after_the_ttl(
        store, bus, payloads, clock, autojump_clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="cordtrio.engine")
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL),
                                       step("after", depends_on=["gate"])))
    async with trio.open_nursery() as nursery:
        a, a_scope = await start_engine(store, bus, payloads, clock, "A", nursery)
        ids = [await a.submit(WF) for _ in range(3)]
        assert {await store.lease_owner(r) for r in ids} == {"A"}
        assert a.leases is not None
        a.leases.crash()  # stops renewing; leaves its leases behind on exit
        a_scope.cancel()
        await trio.sleep(1)
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery)
        if True:
            await trio.sleep(TTL / 2 - 2)
            assert {await store.lease_owner(r) for r in ids} == {"A"}  # not yet
            assert b.active_runs == 0
            await trio.sleep(TTL + 1)
            assert {await store.lease_owner(r) for r in ids} == {"B"}
            (line,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
            assert line.startswith("engine B: took over 3 run(s)")
            for r in ids:  # each id abbreviated to its first 8 characters
                assert r[:8] + "…" in line and r not in line
            for r in ids:
                await b.approve_step(r, "gate")
            run = await store.get_run(ids[0])
            assert run.steps["after"].status == StepStatus.RUNNING
            nursery.cancel_scope.cancel()


async def test_a_stopped_engine_hands_its_runs_over_at_once(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    async with trio.open_nursery() as nursery:
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery)
        async with open_engine(store, bus, payloads=payloads, clock=clock,
                               engine_id="A", lease_ttl=TTL, multi_engine=True) as a:
            run_id = await a.submit(WF)
        assert await store.lease_owner(run_id) is None  # released on the way out
        await trio.sleep(TTL / 2 + 0.1)  # B's next takeover scan
        assert await store.lease_owner(run_id) == "B"
        await b.approve_step(run_id, "gate")
        assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED
        nursery.cancel_scope.cancel()


async def test_commands_on_another_engine_are_forwarded_to_the_owner(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL),
                                       step("gate2", type=StepType.APPROVAL)))
    async with trio.open_nursery() as nursery:
        a, _ = await start_engine(store, bus, payloads, clock, "A", nursery)
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery)
        first = await a.submit(WF)
        second = await a.submit(WF)
        with pytest.raises(NotFoundError, match="nope"):
            await b.approve_step(first, "nope")
        with pytest.raises(NotFoundError, match="missing-run"):
            await b.approve_step("missing-run", "gate")
        await b.approve_step(first, "gate")  # queued for A, applied by A
        with trio.fail_after(5):
            while (await store.get_run(first)).steps["gate"].status != StepStatus.SUCCEEDED:
                await trio.sleep(0.01)
        with pytest.raises(InvalidStateError, match="not waiting"):
            await b.approve_step(first, "gate")
        assert await store.lease_owner(first) == "A"
        assert b.active_runs == 0
        await b.cancel_run(second)
        done = await b.wait_run(second, poll_interval=0.1)
        assert done.status == RunStatus.CANCELLED
        nursery.cancel_scope.cancel()


async def test_a_lost_lease_stops_the_run_task(store, bus, payloads, clock,
                                               autojump_clock) -> None:
    await store.save_workflow(workflow(step("a"), step("b", depends_on=["a"])))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        assert a.active_runs == 1
        await store.release_lease(run_id, "A")  # another engine takes the run over
        assert await store.acquire_lease(run_id, "X", 3600)
        # A result reaching A before its next renewal: the fenced write refuses it, the run
        # is not touched, the result is handed to the new owner's inbox.
        await a.handle_job_result(ok(f"{run_id}:a@1"))
        await trio.testing.wait_all_tasks_blocked()
        assert a.active_runs == 0
        stored = await store.get_run(run_id)
        assert stored.steps["a"].status == StepStatus.RUNNING
        assert len(await store.take_commands(run_id)) == 1


async def test_the_keeper_cancels_a_task_whose_lease_is_gone(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        await store.release_lease(run_id, "A")
        await store.acquire_lease(run_id, "X", 3600)
        await trio.sleep(TTL / 3 + 0.1)  # one renewal period
        assert a.active_runs == 0
        await a.approve_step(run_id, "gate")  # now forwarded to X, not applied by A
        assert (await store.get_run(run_id)).steps["gate"].status == StepStatus.WAITING
        assert len(await store.take_commands(run_id)) == 1


async def test_a_client_submission_is_picked_up_by_an_engine(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("a"), input_schema={
        "type": "object", "required": ["n"]}))
    client = Client(store, clock=clock)
    with pytest.raises(ValidationError, match="input"):
        await client.submit(WF, {})
    async with open_worker(bus, payloads, {"job.test": echo}), \
            open_engine(store, bus, payloads=payloads, clock=clock, lease_ttl=TTL,
                        multi_engine=True):
        run_id = await client.submit(WF, {"n": 7}, idempotency_key="k1")
        assert await client.submit(WF, {"n": 7}, idempotency_key="k1") == run_id
        with trio.fail_after(60):
            run = await client.wait_run(run_id, poll_interval=0.1)
        assert run.status == RunStatus.SUCCEEDED
        assert run.output == {"a": {"n": 7}}
        again = await client.rerun_from(run_id)
        with trio.fail_after(60):
            assert (await client.wait_run(again, poll_interval=0.1)).status \
                == RunStatus.SUCCEEDED


async def test_a_client_submission_waits_for_an_engine(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    client = Client(store, clock=clock)
    run_id = await client.submit(WF)
    await client.cancel_run(run_id)  # queued too: applied after the start
    assert (await client.get_run(run_id)).status == RunStatus.PENDING
    async with open_engine(store, bus, payloads=payloads, clock=clock, lease_ttl=TTL,
                           multi_engine=True):
        with trio.fail_after(60):
            run = await client.wait_run(run_id, poll_interval=0.1)
    assert run.status == RunStatus.CANCELLED


async def test_a_client_needs_a_store_with_leases() -> None:
    class Plain:
        pass

    with pytest.raises(ValidationError, match="RunLeases"):
        Client(Plain())  # type: ignore[arg-type]


async def test_a_key_left_by_a_failed_submit_names_the_run_created_now(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    # an earlier submit claimed the key, then crashed before creating its run
    assert await store.try_set_run_idempotency_key("k1", "claimed-run")
    client = Client(store, clock=clock)
    assert await client.submit(WF, idempotency_key="k1") == "claimed-run"
    assert (await store.get_run("claimed-run")).status == RunStatus.PENDING
    assert await store.try_set_run_idempotency_key("k2", "claimed-too")
    async with open_engine(store, bus, payloads=payloads, clock=clock) as engine:
        assert await engine.submit(WF, idempotency_key="k2") == "claimed-too"
        assert (await store.get_run("claimed-too")).status == RunStatus.WAITING
        assert await engine.submit(WF, idempotency_key="k2") == "claimed-too"


async def test_commands_for_a_missing_run_are_dropped_not_rescanned(
        store, bus, payloads, clock, autojump_clock) -> None:
    await store.push_command("deleted-run", b"anything")
    async with open_engine(store, bus, payloads=payloads, clock=clock, lease_ttl=TTL,
                           multi_engine=True):
        await trio.sleep(TTL)
    assert await store.runs_with_commands() == []
    assert await store.lease_owner("deleted-run") is None


class StoreCalls(MemoryStore):
    """Counts the store calls a submit's run task makes; ``on_create`` runs right after a
    leased create (before the run's task starts)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.on_create: Any = None

    async def create_run_leased(self, run: Any, owner: str, ttl: float) -> bool:
        self.calls["create_run_leased"] += 1
        got = await super().create_run_leased(run, owner, ttl)
        if self.on_create is not None:
            await self.on_create(run.id)
        return got

    async def get_run(self, run_id: str) -> Any:
        self.calls["get_run"] += 1
        return await super().get_run(run_id)

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        self.calls["acquire_lease"] += 1
        return await super().acquire_lease(run_id, owner, ttl)

    async def take_commands(self, run_id: str) -> list[bytes]:
        self.calls["take_commands"] += 1
        return await super().take_commands(run_id)


async def test_a_submitted_run_is_created_leased_and_started_without_reading_it(
        bus, payloads, clock, autojump_clock) -> None:
    store = StoreCalls()
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        assert await store.lease_owner(run_id) == "A"
        assert (await store.get_run(run_id)).steps["gate"].status == StepStatus.WAITING
        store.calls["get_run"] -= 1  # the test's own
        assert store.calls == Counter({"create_run_leased": 1})
        await a.approve_step(run_id, "gate")
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED


async def test_a_command_queued_between_the_create_and_the_start_is_applied(
        bus, payloads, clock, autojump_clock) -> None:
    store = StoreCalls()
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    client = Client(store)

    async def cancel_at_once(run_id: str) -> None:
        await client.cancel_run(run_id)  # the lease names A: A is woken for it

    store.on_create = cancel_at_once
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        with trio.fail_after(60):
            done = await a.wait_run(run_id, poll_interval=0.1)
    assert done.status == RunStatus.CANCELLED


async def test_a_lease_taken_with_the_create_long_ago_is_not_trusted(
        bus, payloads, clock, autojump_clock) -> None:
    store = StoreCalls()
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        keeper = a.leases
        assert keeper is not None

        fresh_run = keeper.fresh_run

        def stalled(created: Any) -> Any:  # as if the engine stalled before the start
            keeper._leased_at_create[created.id] -= TTL
            return fresh_run(created)

        keeper.fresh_run = stalled  # type: ignore[method-assign]
        run_id = await a.submit(WF)  # the start goes through the store: read, not trusted
        with trio.fail_after(60):
            while (await store.get_run(run_id)).steps.get("gate") is None:
                await trio.sleep(0.1)
        assert store.calls["take_commands"] >= 1
        await a.approve_step(run_id, "gate")
        assert (await a.wait_run(run_id, poll_interval=0.1)).status == RunStatus.SUCCEEDED


async def test_a_run_that_ended_before_the_wait_is_answered_without_a_read_by_its_engine(
        bus, payloads, clock, autojump_clock) -> None:
    """Multi-engine mode too: the engine whose task finished the run keeps the final run
    for the next ``wait_run`` (a terminal run never changes again); another engine reads
    the store, and a run deleted since is not found."""
    store = StoreCalls()
    await store.save_workflow(workflow(step("gate", type=StepType.APPROVAL)))
    async with trio.open_nursery() as nursery:
        a, _ = await start_engine(store, bus, payloads, clock, "A", nursery)
        b, _ = await start_engine(store, bus, payloads, clock, "B", nursery)
        first, second, third = [await a.submit(WF) for _ in range(3)]
        for run_id in (first, second, third):
            await a.approve_step(run_id, "gate")
            while a.is_active(run_id):
                await trio.sleep(0.1)
        reads = store.calls["get_run"]
        got = await a.wait_run(first)
        assert store.calls["get_run"] == reads
        assert got.status == RunStatus.SUCCEEDED
        assert got.to_dict() == (await store.get_run(first)).to_dict()
        reads = store.calls["get_run"]
        assert (await b.wait_run(second)).status == RunStatus.SUCCEEDED
        assert store.calls["get_run"] == reads + 1  # B did not drive it: B reads it
        await store.delete_run(third)
        with pytest.raises(NotFoundError):
            await a.wait_run(third)
        nursery.cancel_scope.cancel()


async def test_a_finished_run_lets_go_of_its_lease_in_its_own_scope(
        store, bus, payloads, clock, autojump_clock, monkeypatch) -> None:
    """A task that ended as it should releases its run's lease from its own cancel scope,
    shielded with the cleanup's deadline (``OwnedRun.shielded``: no scope of the keeper's
    own); one whose lease was lost lets go the other way, in a scope of the keeper's."""
    from cordtrio.engine.leases import LeaseKeeper

    shielded: list[tuple[bool, bool, float]] = []
    real = LeaseKeeper.let_go

    async def spy(self: LeaseKeeper, run: Any) -> None:
        scope = run.scope
        shielded.append((run.shielded, scope.shield,
                         scope.deadline - trio.current_time()))
        await real(self, run)

    monkeypatch.setattr(LeaseKeeper, "let_go", spy)
    await store.save_workflow(workflow(step("a")))
    async with open_engine(store, bus, payloads=payloads, clock=clock, engine_id="A",
                           lease_ttl=TTL, multi_engine=True) as a:
        run_id = await a.submit(WF)
        assert await store.lease_owner(run_id) == "A"
        await a.handle_job_result(ok(f"{run_id}:a@1"))
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()
        assert a.active_runs == 0
        assert await store.lease_owner(run_id) is None  # released as the task ended
        assert shielded == [(True, True, LeaseKeeper.cleanup_timeout)]
        shielded.clear()
        # a lost lease: the task's scope is cancelled, the keeper shields its own
        other = await a.submit(WF)
        await store.release_lease(other, "A")
        assert await store.acquire_lease(other, "X", 3600)
        await trio.sleep(TTL / 3 + 0.1)  # one renewal period
        assert a.active_runs == 0
        [(own, _, _)] = shielded
        assert not own and await store.lease_owner(other) == "X"


@pytest.mark.parametrize("outside", ["hangs", "cancelled"])
async def test_a_finished_runs_let_go_is_shielded_and_bounded_by_the_cleanup_time(
        store, bus, payloads, clock, autojump_clock, monkeypatch, outside: str) -> None:
    """The let-go of a run that ended as it should, in the run's own scope: a lease release
    that hangs is cut at the cleanup's time (the task ends, the next task for the run is not
    held up), and the engine closing meanwhile does not cut it short. (A task that finished
    its run released the lease with its last write; one that loaded the finished run, for a
    late command, releases it as it lets go.)"""
    from cordtrio.engine.leases import LeaseKeeper

    released: list[float] = []
    real = store.release_lease

    async def release_lease(run_id: str, owner: str) -> bool:
        started = trio.current_time()
        if outside == "hangs":
            await trio.sleep_forever()
        await trio.sleep(1)  # slow, within the cleanup's time
        released.append(trio.current_time() - started)
        return bool(await real(run_id, owner))

    await store.save_workflow(workflow(step("a")))
    async with trio.open_nursery() as nursery:
        closed = trio.Event()

        async def engine(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with open_engine(store, bus, payloads=payloads, clock=clock,
                                   engine_id="A", lease_ttl=TTL, multi_engine=True) as a:
                task_status.started(a)
                await trio.sleep_forever()
            closed.set()

        a = await nursery.start(engine)
        run_id = await a.submit(WF)
        await a.handle_job_result(ok(f"{run_id}:a@1"))
        assert (await a.wait_run(run_id)).status == RunStatus.SUCCEEDED
        await trio.testing.wait_all_tasks_blocked()
        assert await store.lease_owner(run_id) is None and a.active_runs == 0
        monkeypatch.setattr(store, "release_lease", release_lease)
        start = trio.current_time()
        await a.cancel_run(run_id)  # a late command: a task loads the finished run
        if outside == "cancelled":  # the engine closes while the release waits
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        else:
            with trio.fail_after(LeaseKeeper.cleanup_timeout + 1):
                while a.active_runs or a.ownership.closing:
                    await trio.sleep(0.1)
            assert trio.current_time() - start >= LeaseKeeper.cleanup_timeout
            assert await store.lease_owner(run_id) == "A"  # left to expire
            nursery.cancel_scope.cancel()
    if outside == "cancelled":
        assert released == [1.0]  # the release went through, shielded
        assert await store.lease_owner(run_id) is None
