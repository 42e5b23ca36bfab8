"""The engine with real workers (``open_worker``) over the in-memory bus: realistic
workflows, many runs at once, and every step type."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_engine_kit import WF, step, timeline_types, workflow

from cordtrio.engine import open_engine
from cordtrio.model import RetryConfig, RunStatus, StepStatus, StepType
from cordtrio.protocol import SystemAlert
from cordtrio.worker import Job, open_worker

ITEMS = ["a", "b", "c", "d", "e", "f", "g"]


class Handlers:
    """fetch → items; item → upper-cased item (fails once for ``c``); final → summary.
    Tracks how many item handlers run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.failed_once: set[Any] = set()

    async def fetch(self, job: Job) -> dict[str, Any]:
        await trio.sleep(1)
        return {"items": ITEMS, "source": job.input["url"]}

    async def item(self, job: Job) -> dict[str, Any]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await trio.sleep(5)
            if job.item == "c" and "c" not in self.failed_once:
                self.failed_once.add("c")
                raise RuntimeError("flaky upstream")
            return {"value": job.item.upper(), "index": job.request.env["foreach_index"]}
        finally:
            self.running -= 1

    async def final(self, job: Job) -> dict[str, Any]:
        return {"summary": f"{job.input['count']} items, big={job.input['big']}"}

    def mapping(self) -> dict[str, Any]:
        return {"job.fetch": self.fetch, "job.item": self.item, "job.final": self.final}


async def test_realistic_workflow(engine, store, save, payloads, bus, alerts, autojump_clock):
    await save(
        step("fetch", topic="job.fetch", input={"url": "${input.url}"},
             output_path="data.fetched"),
        step("process", topic="job.item", depends_on=["fetch"],
             for_each="steps.fetch.output.items", max_parallel=3,
             retry=RetryConfig(max_retries=2, initial_backoff_sec=2)),
        step("check", type=StepType.CONDITION, depends_on=["process"],
             condition="length(steps.fetch.output.items) > 3", output_path="flags.big"),
        step("tell", type=StepType.NOTIFY, depends_on=["check"],
             input={"message": "processed ${length(steps.fetch.output.items)} items",
                    "level": "warn", "code": "DONE"}),
        step("final", topic="job.final", depends_on=["tell"], output_path="result",
             input={"count": "${length(steps.fetch.output.items)}",
                    "big": "${steps.check.output}"}),
    )
    handlers = Handlers()
    async with open_worker(bus, payloads, handlers.mapping(), max_concurrency=64):
        run_id = await engine.submit(WF, {"url": "https://example.test/items"})
        run = await engine.wait_run(run_id)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert handlers.max_running == 3  # max_parallel holds, and is used
    fetched = {"items": ITEMS, "source": "https://example.test/items"}
    steps = run.context["steps"]
    assert steps["fetch"]["output"] == fetched and run.context["data"] == {"fetched": fetched}
    assert [steps[f"process[{i}]"]["output"]["value"] for i in range(len(ITEMS))] == [
        s.upper() for s in ITEMS]
    assert run.steps["process"].children["process[2]"].attempts == 2  # the flaky one
    assert "flaky upstream" not in str(run.steps["process"].error)
    assert run.context["flags"] == {"big": True} and steps["check"]["output"] is True
    assert run.context["result"] == {"summary": "7 items, big=True"}
    assert run.output == {"final": {"summary": "7 items, big=True"}}
    [alert] = alerts.payloads
    assert isinstance(alert, SystemAlert)
    assert (alert.level, alert.message, alert.code) == ("WARN", "processed 7 items", "DONE")
    assert "step_retry_scheduled" in await timeline_types(store, run_id, "process[2]")


async def test_many_runs_in_parallel(engine, save, payloads, bus, autojump_clock):
    async def double(job: Job) -> dict[str, Any]:
        await trio.sleep(1)
        return {"n": job.input["n"] * 2}

    await save(step("one", input={"n": "${input.n}"}),
               step("two", depends_on=["one"], input={"n": "${steps.one.output.n}"}))
    runs: dict[int, Any] = {}

    async def one_run(n: int) -> None:
        runs[n] = await engine.wait_run(await engine.submit(WF, {"n": n}))

    async with (
        open_worker(bus, payloads, {"job.test": double}, max_concurrency=16),
        trio.open_nursery() as nursery,
    ):
        for n in range(50):
            nursery.start_soon(one_run, n)
    assert {r.status for r in runs.values()} == {RunStatus.SUCCEEDED}
    assert all(r.output == {"two": {"n": 4 * n}} for n, r in runs.items())


WORKER_LIKE = [t for t in StepType if t.is_worker_like]


@pytest.mark.parametrize("kind", list(StepType), ids=str)
async def test_a_run_per_step_type(kind, store, bus, payloads, clock, alerts, autojump_clock):
    async def handler(job: Job) -> dict[str, Any]:
        return {"topic": job.topic, "x": job.input.get("x")}

    extra: dict[str, Any] = {
        StepType.CONDITION: {"condition": "input.x > 1"},
        StepType.DELAY: {"delay_sec": 90},
        StepType.NOTIFY: {"input": {"message": "x is ${input.x}"}},
    }.get(kind, {"topic": f"job.{kind.value}"} if kind.is_worker_like else {})
    await store.save_workflow(workflow(step("s", type=kind, **extra)))
    topics = {f"job.{t.value}": handler for t in WORKER_LIKE}
    async with (
        open_worker(bus, payloads, topics),
        open_engine(store, bus, payloads=payloads, clock=clock) as engine,
    ):
        t0 = trio.current_time()
        run_id = await engine.submit(WF, {"x": 2})
        if kind == StepType.APPROVAL:
            assert (await store.get_run(run_id)).status == RunStatus.WAITING
            await engine.approve_step(run_id, "s")
        run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.steps["s"].status == StepStatus.SUCCEEDED
    if kind.is_worker_like:
        assert run.context["steps"]["s"]["output"] == {"topic": f"job.{kind.value}", "x": 2}
    elif kind == StepType.CONDITION:
        assert run.steps["s"].output is True
    elif kind == StepType.DELAY:
        assert trio.current_time() - t0 == pytest.approx(90, abs=1e-3)
    elif kind == StepType.NOTIFY:
        assert [a.message for a in alerts.payloads] == ["x is 2"]

