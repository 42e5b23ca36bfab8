"""The five benchmark workloads: their workflows, the no-op handlers, and how each is driven.

Every workload is driven against an already open engine (``drive``) whose worker serves
``HANDLERS``; which store, bus and worker process sit behind it is ``backends``' business.
Handlers do no work and return a small dict, so what is measured is the engine, the store and
the bus: the cost per step of the orchestration itself.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from cordtrio import Engine, Job, RunStatus, Workflow

from .floor_program import submit_many

NOOP = "bench.noop"
FLAKY = "bench.flaky"

CHAIN_STEPS = 5
BRANCHES, BRANCH_STEPS = 50, 4
FANOUT_PARALLEL = 100
RETRY_STEPS = 5
RETRY_BACKOFF_SEC = 1


async def noop(job: Job) -> dict[str, Any]:
    """The no-op handler: a small dict, no work."""
    return {"ok": True}


async def flaky(job: Job) -> dict[str, Any]:
    """Fails the first attempt of every job (job ids end in ``@<attempt>``), then succeeds."""
    if job.job_id.endswith("@1"):
        raise RuntimeError("first attempt fails (benchmark W5)")
    return {"ok": True}


HANDLERS: dict[str, Callable[[Job], Awaitable[dict[str, Any]]]] = {NOOP: noop, FLAKY: flaky}
"""What every benchmark worker serves, in-process or in ``benchmarks.worker_proc``."""


@dataclass
class Measured:
    """What one drive of a workload produced (the backend adds RSS and Redis figures)."""

    steps: int
    runs: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Probe:
    """What a drive may ask of the backend: the server's memory (Redis ``used_memory``),
    when there is a server."""

    server_memory: Callable[[], int] | None = None


@dataclass(frozen=True)
class Workload:
    """A workload: its workflow, what its size counts, and its default sizes."""

    name: str
    summary: str
    unit: str  # what ``size`` counts: "runs" or "items"
    default_sizes: tuple[int, ...]  # on the memory backend
    remote_sizes: tuple[int, ...]  # on Redis backends and peers (a full run stays < 10 min)
    definition: Callable[[], dict[str, Any]]
    drive: Callable[[Engine, Workflow, int, Probe], Awaitable[Measured]]

    def workflow(self) -> Workflow:
        return Workflow.from_dict(self.definition())


def _chain(topic: str, steps: int, **extra: Any) -> dict[str, Any]:
    return {f"s{i}": {"topic": topic, "depends_on": [f"s{i - 1}"] if i else [], **extra}
            for i in range(steps)}


def _w1() -> dict[str, Any]:
    return {"id": "bench-w1", "steps": _chain(NOOP, CHAIN_STEPS)}


def _w2() -> dict[str, Any]:
    return {"id": "bench-w2", "steps": {
        "each": {"topic": NOOP, "for_each": "input.items", "max_parallel": FANOUT_PARALLEL,
                 "input": {"n": "${item}"}},
        "join": {"topic": NOOP, "depends_on": ["each"]}}}


def _w3() -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for b in range(BRANCHES):
        for i in range(BRANCH_STEPS):
            steps[f"b{b}s{i}"] = {"topic": NOOP, "depends_on": [f"b{b}s{i - 1}"] if i else []}
    steps["join"] = {"topic": NOOP,
                     "depends_on": [f"b{b}s{BRANCH_STEPS - 1}" for b in range(BRANCHES)]}
    return {"id": "bench-w3", "steps": steps}


def _w4() -> dict[str, Any]:
    return {"id": "bench-w4", "steps": {
        "gate": {"type": "approval"},
        "after": {"topic": NOOP, "depends_on": ["gate"]}}}


def _w5() -> dict[str, Any]:
    retry = {"max_retries": 1, "initial_backoff_sec": RETRY_BACKOFF_SEC,
             "max_backoff_sec": RETRY_BACKOFF_SEC}
    return {"id": "bench-w5", "steps": _chain(FLAKY, RETRY_STEPS, retry=retry)}


async def _wait_all(engine: Engine, run_ids: list[str]) -> None:
    for run_id in run_ids:
        run = await engine.wait_run(run_id)
        if run.status != RunStatus.SUCCEEDED:
            raise RuntimeError(f"benchmark run {run_id} ended {run.status.value}, "
                               "expected succeeded")


async def _submit_many(engine: Engine, wf: Workflow, runs: int) -> list[str]:
    """Submit ``runs`` runs of ``wf`` to ``engine`` (``submit_many``)."""
    return await submit_many(lambda: engine.submit(wf.id), runs)


async def _drive_runs(engine: Engine, wf: Workflow, runs: int, steps_per_run: int) -> Measured:
    start = time.perf_counter()
    ids = await _submit_many(engine, wf, runs)
    await _wait_all(engine, ids)
    return Measured(runs * steps_per_run, runs, time.perf_counter() - start)


async def _drive_w1(engine: Engine, wf: Workflow, size: int, probe: Probe) -> Measured:
    return await _drive_runs(engine, wf, size, CHAIN_STEPS)


async def _drive_w2(engine: Engine, wf: Workflow, size: int, probe: Probe) -> Measured:
    start = time.perf_counter()
    run_id = await engine.submit(wf.id, {"items": list(range(size))})
    await _wait_all(engine, [run_id])
    return Measured(size + 1, 1, time.perf_counter() - start)


async def _drive_w3(engine: Engine, wf: Workflow, size: int, probe: Probe) -> Measured:
    return await _drive_runs(engine, wf, size, BRANCHES * BRANCH_STEPS + 1)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import resource
    return pages * resource.getpagesize()


async def _drive_w4(engine: Engine, wf: Workflow, size: int, probe: Probe) -> Measured:
    """Park ``size`` runs on an approval step; memory per waiting run; approve all; drain.

    Memory per waiting run is what the parking allocated and still holds (``tracemalloc``,
    traced only while parking, so the park time includes its overhead), divided by
    ``size``; the RSS delta is reported too, but a long-lived process reuses freed memory,
    so it understates. On Redis, the server's ``used_memory`` delta as well.
    """
    gc.collect()
    rss0 = current_rss_bytes()
    server0 = probe.server_memory() if probe.server_memory else 0
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        ids = await _submit_many(engine, wf, size)
        park = time.perf_counter() - t0
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    rss1 = current_rss_bytes()
    server1 = probe.server_memory() if probe.server_memory else 0
    active = engine.active_runs
    waiting = (await engine.store.get_run(ids[-1])).status
    if waiting != RunStatus.WAITING:
        raise RuntimeError(f"benchmark run {ids[-1]} is {waiting.value}, expected waiting")
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(64):
            nursery.start_soon(_approve, engine, ids[k::64])
    await _wait_all(engine, ids)
    drain = time.perf_counter() - start
    extra = {"park_seconds": park, "heap_bytes_per_waiting_run": heap / size,
             "rss_per_waiting_run_bytes": (rss1 - rss0) / size,
             "active_run_tasks_while_waiting": float(active)}
    if probe.server_memory:
        extra["server_bytes_per_waiting_run"] = (server1 - server0) / size
    return Measured(2 * size, size, drain, extra)


async def _approve(engine: Engine, run_ids: list[str]) -> None:
    for run_id in run_ids:
        await engine.approve_step(run_id, "gate")


async def _drive_w5(engine: Engine, wf: Workflow, size: int, probe: Probe) -> Measured:
    m = await _drive_runs(engine, wf, size, RETRY_STEPS)
    m.extra["attempts"] = float(2 * m.steps)
    return m


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("w1", f"chains: RUNS runs x {CHAIN_STEPS} dependent steps, all in flight",
             "runs", (1000,), (100,), _w1, _drive_w1),
    Workload("w2", f"fan-out: 1 run, for_each over ITEMS (max_parallel {FANOUT_PARALLEL}) "
                   "then a join", "items", (1000, 10000), (1000,), _w2, _drive_w2),
    Workload("w3", f"wide DAG: RUNS runs x {BRANCHES} branches of {BRANCH_STEPS} steps "
                   "joining at the end", "runs", (30,), (3,), _w3, _drive_w3),
    Workload("w4", "waiting runs: RUNS runs parked on an approval, then approved and drained",
             "runs", (10000,), (200,), _w4, _drive_w4),
    Workload("w5", f"retries: RUNS runs x {RETRY_STEPS} steps, each fails once "
                   f"(backoff {RETRY_BACKOFF_SEC} s)", "runs", (200,), (50,), _w5, _drive_w5),
)}
