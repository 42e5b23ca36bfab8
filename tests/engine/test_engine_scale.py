"""The cost model (ports.py, SPEC §12): a fan-out child result writes O(1) parts of the run
and makes O(1) store calls, whatever the number of children."""

from __future__ import annotations

import functools
import inspect
import statistics
from collections import Counter
from typing import Any

import trio
from test_engine_kit import WF, ok, put_output, step, workflow

from cordtrio.backends.memory import MemoryStore
from cordtrio.engine import open_engine
from cordtrio.model import RunStatus, StepStatus
from cordtrio.ports import RunChanges
from cordtrio.protocol import SUBJECT_SUBMIT


def parts(changes: RunChanges) -> int:
    return (len(changes.steps) + sum(len(kids) for kids in changes.children.values())
            + len(changes.context_steps) + len(changes.context_keys))


class CountingStore:
    """Proxies a ``MemoryStore``, counting calls per method and the parts written by each
    ``save_run_changes``."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.writes: list[int] = []

    async def save_run_changes(self, run: Any, changes: RunChanges, timeline: Any = ()) -> None:
        self.calls["save_run_changes"] += 1
        self.writes.append(parts(changes))
        await self._inner.save_run_changes(run, changes, timeline)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(method):
            return method  # plain attributes (``multi_engine_default``) as the store has them

        @functools.wraps(method)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted

    def snapshot(self) -> tuple[int, int]:
        return sum(self.calls.values()), len(self.writes)


async def fan_out(n: int, bus: Any, payloads: Any) -> dict[str, Any]:
    """Run a for_each over ``n`` items (max_parallel 100), answering each child by hand,
    one result at a time, oldest job first; measure the store traffic per child result."""
    store = CountingStore(MemoryStore())
    await store.save_workflow(workflow(
        step("fan", for_each="input.items", max_parallel=100, input={"x": "${item}"}),
        step("after", depends_on=["fan"])))
    calls_per_result: list[int] = []
    parts_per_result: list[int] = []
    async with (
        bus.subscribe(SUBJECT_SUBMIT, max_buffer=n + 10) as jobs,
        open_engine(store, bus, payloads=payloads) as engine,
    ):
        run_id = await engine.submit(WF, {"items": list(range(n))})
        creating = list(store.writes)
        queue = [jobs.receive_nowait().payload.job_id for _ in range(min(n, 100))]
        answered = 0
        while answered < n:
            job_id = queue[answered]
            answered += 1
            ptr = await put_output(payloads, job_id, {"i": answered})
            calls, writes = store.snapshot()
            await engine.handle_job_result(ok(job_id, ptr))
            after_calls, after_writes = store.snapshot()
            calls_per_result.append(after_calls - calls)
            parts_per_result.append(sum(store.writes[writes:after_writes]))
            while True:
                try:
                    request = jobs.receive_nowait().payload
                except trio.WouldBlock:
                    break
                if "[" in request.job_id:
                    queue.append(request.job_id)
        assert len(queue) == n
        run = await store.get_run(run_id)
        assert run.steps["fan"].status == StepStatus.SUCCEEDED
        assert run.steps["after"].status == StepStatus.RUNNING
        assert run.status == RunStatus.RUNNING
        steps = run.context["steps"]
        assert len(steps) == n + 1 and len(steps["fan"]["output"]) == n  # children + parent
    return {
        "creating": creating,
        "calls": calls_per_result,
        "parts": parts_per_result,
        "writes": store.writes,
    }


async def test_a_child_result_costs_the_same_for_100_and_10000_children(
        bus, payloads, autojump_clock):
    small = await fan_out(100, bus, payloads)
    big = await fan_out(10_000, bus, payloads)

    # creating the children is the one write of O(N) parts
    assert max(small["creating"]) >= 100 and max(big["creating"]) >= 10_000
    assert max(big["writes"]) == max(big["creating"])
    assert sorted(big["writes"])[-2] <= 6

    small_mean = statistics.mean(small["parts"])
    big_mean = statistics.mean(big["parts"])
    assert 1 <= small_mean <= 6 and 1 <= big_mean <= 6, (small_mean, big_mean)
    assert big_mean <= 1.5 * small_mean, (small_mean, big_mean)
    assert max(big["parts"]) <= 6  # not just on average: every child result is O(1)
    assert min(big["parts"]) >= 1  # (and every one is persisted)

    # store calls per child result are bounded by a constant
    assert max(big["calls"]) <= 3 and max(small["calls"]) <= 3


async def test_a_chain_step_costs_one_store_write(bus, payloads, autojump_clock):
    """A result in a chain of dependent steps is one ``save_run_changes`` (state and timeline
    together) writing the finished step, the next one and the output: no reads of the run
    or the workflow, no other call — the per-step cost the W1 benchmark measures."""
    store = CountingStore(MemoryStore())
    chain = [step(f"s{i}", depends_on=[f"s{i - 1}"] if i else []) for i in range(5)]
    await store.save_workflow(workflow(*chain))
    per_result: list[Counter[str]] = []
    parts_per_result: list[int] = []
    async with (
        bus.subscribe(SUBJECT_SUBMIT, max_buffer=10) as jobs,
        open_engine(store, bus, payloads=payloads) as engine,
    ):
        run_id = await engine.submit(WF)
        for i in range(5):
            job_id = jobs.receive_nowait().payload.job_id
            assert job_id == f"{run_id}:s{i}@1"
            ptr = await put_output(payloads, job_id, {"i": i})
            before, writes = Counter(store.calls), len(store.writes)
            await engine.handle_job_result(ok(job_id, ptr))
            per_result.append(store.calls - before)
            parts_per_result.append(sum(store.writes[writes:]))
        run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert per_result[:4] == [Counter(save_run_changes=1)] * 4
    # the last one ends the run (its task may then let go of the run: lease bookkeeping)
    assert per_result[4]["save_run_changes"] == 1
    assert not [name for name in per_result[4] if name.startswith(("get_", "list_"))]
    assert parts_per_result == [3, 3, 3, 3, 2]  # done step + its output (+ the next step)


async def test_submit_then_wait_reads_the_workflow_once_and_the_run_never(
        bus, payloads, autojump_clock):
    """``submit`` hands its run task the workflow it read and the run it created, and a
    ``wait_run`` waiting on a run this engine drives gets the run from the task that
    finished it: one ``get_workflow`` and no ``get_run`` for a whole run."""
    store = CountingStore(MemoryStore())
    await store.save_workflow(workflow(step("a"), step("b", depends_on=["a"])))
    got: list[Any] = []
    async with (
        bus.subscribe(SUBJECT_SUBMIT, max_buffer=10) as jobs,
        open_engine(store, bus, payloads=payloads, multi_engine=False) as engine,
    ):
        store.calls.clear()
        run_id = await engine.submit(WF)

        async def waiter() -> None:
            got.append(await engine.wait_run(run_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            for _ in range(2):
                job_id = jobs.receive_nowait().payload.job_id
                await engine.handle_job_result(ok(job_id, await put_output(payloads, job_id, 1)))
        stored = await store.get_run(run_id)
    assert got[0].status == RunStatus.SUCCEEDED
    assert got[0].to_dict() == stored.to_dict()  # what the task handed over is what is stored
    # (a store that lends its definition, ``ports.SharedWorkflows``, is read through that)
    assert store.calls["get_workflow"] + store.calls["get_workflow_shared"] == 1
    assert store.calls["get_run"] == 1, store.calls  # only the check above
