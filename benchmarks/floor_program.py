"""The floor program itself: the leanest standalone Trio program of W1's shape.

N runs x ``steps`` dependent no-op jobs, one task per run, a worker pool over a memory
channel, a dict as the store. A worker puts a job's result straight into its run's mailbox
and wakes the parked run task with ``trio.lowlevel.reschedule``; nothing yields unless it
must wait. ``benchmarks.floor`` measures it beside cordtrio.

It imports nothing but Trio and the standard library (not even the rest of ``benchmarks``),
so that another checkout's interpreter can load this file by its path and time the same
floor beside that checkout's own cordtrio, in one process (``benchmarks.floor_ratio``).
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

WORKERS = 256
"""Worker tasks in the pool (the in-process worker's ``max_concurrency`` in the harness)."""


class _Mailbox:
    """A run task's inbox: a deque and the parked reader, woken directly by ``put``."""

    __slots__ = ("items", "reader")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()  # a result, in whatever form the drive sends it
        self.reader: trio.lowlevel.Task | None = None

    def put(self, item: Any) -> None:
        self.items.append(item)
        reader = self.reader
        if reader is not None:
            self.reader = None
            trio.lowlevel.reschedule(reader)

    async def get(self) -> Any:
        if not self.items:
            self.reader = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self.reader = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.items.popleft()


@dataclass(slots=True)
class _Job:
    job_id: str
    input: dict[str, Any]
    reply_to: _Mailbox


async def _noop(job: _Job) -> dict[str, Any]:
    return {"ok": True}


async def _worker(jobs: trio.MemoryReceiveChannel[_Job]) -> None:
    """Take jobs (waiting only when none is buffered), run them, answer in the mailbox."""
    while True:
        try:
            job = jobs.receive_nowait()
        except trio.WouldBlock:
            try:
                job = await jobs.receive()
            except trio.EndOfChannel:
                return
        except trio.EndOfChannel:
            return
        job.reply_to.put(await _noop(job))


class _GrownPool:
    """The floor's pool started as jobs need it, as cordtrio's worker starts its slots: one
    worker at first, one more whenever a worker takes a job while none other is waiting,
    up to ``limit``. A burst of jobs that never wait is then run by one or two workers that
    take each buffered job without a task switch."""

    def __init__(self, nursery: trio.Nursery, jobs: trio.MemoryReceiveChannel[_Job],
                 limit: int) -> None:
        self.nursery, self.jobs, self.limit = nursery, jobs, limit
        self.started = 0
        self.waiting = 0

    def grow(self) -> None:
        if self.waiting == 0 and self.started < self.limit:
            self.started += 1
            self.nursery.start_soon(self.work)

    async def work(self) -> None:
        jobs = self.jobs
        while True:
            try:
                job = jobs.receive_nowait()
            except trio.WouldBlock:
                self.waiting += 1
                try:
                    job = await jobs.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self.waiting -= 1
            except trio.EndOfChannel:
                return
            self.grow()
            job.reply_to.put(await _noop(job))


class _Signal:
    """Set once; its one waiter is woken directly (a submit's reply, a run's finish)."""

    __slots__ = ("is_set", "waiter")

    def __init__(self) -> None:
        self.is_set = False
        self.waiter: trio.lowlevel.Task | None = None

    def set(self) -> None:
        self.is_set = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        if self.is_set:
            return
        self.waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Floor:
    """The store, the job channel and the run tasks' nursery of one drive."""

    def __init__(self, run_tasks: trio.Nursery, steps: int) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, _Signal] = {}
        self.send, self.receive = trio.open_memory_channel[_Job](math.inf)
        self.run_tasks = run_tasks
        self.steps = steps
        self.ids = 0

    async def submit(self) -> str:
        """Create the run, start its task, return once the task has started it."""
        self.ids += 1
        run_id = f"run-{self.ids}"
        self.store[run_id] = {"status": "pending", "steps": {}}
        self.finished[run_id] = _Signal()
        started = _Signal()
        self.run_tasks.start_soon(self.run, run_id, started)
        await started.wait()
        return run_id

    async def wait_run(self, run_id: str) -> dict[str, Any]:
        finished = self.finished.get(run_id)
        if finished is not None:
            await finished.wait()
        return self.store[run_id]

    async def run(self, run_id: str, started: _Signal) -> None:
        """One run's task: dispatch each step, wait for its result, record it."""
        record = self.store[run_id]
        record["status"] = "running"
        steps = record["steps"]
        mailbox = _Mailbox()
        output: dict[str, Any] = {}
        for i in range(self.steps):
            step_id = f"s{i}"
            job_id = f"{run_id}:{step_id}@1"
            steps[step_id] = {"status": "running", "job_id": job_id}
            self.send.send_nowait(_Job(job_id, {"previous": output}, mailbox))
            if i == 0:
                started.set()
            output = await mailbox.get()
            steps[step_id] = {"status": "succeeded", "job_id": job_id, "output": output}
        record["status"] = "succeeded"
        self.finished.pop(run_id).set()


async def submit_many(submit: Callable[[], Awaitable[str]], runs: int,
                      concurrency: int = 64) -> list[str]:
    """Call ``submit`` ``runs`` times from ``concurrency`` tasks: many in flight, as many
    clients would; the ids in the order the calls returned."""
    ids: list[str] = []

    async def submitter(n: int) -> None:
        for _ in range(n):
            ids.append(await submit())

    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            share = runs // concurrency + (1 if k < runs % concurrency else 0)
            if share:
                nursery.start_soon(submitter, share)
    return ids


async def drive_floor(runs: int, steps: int, *, grown: bool = False,
                      instrument: trio.abc.Instrument | None = None) -> dict[str, float]:
    """One drive of the floor in W1's shape (runs submitted from 64 tasks, each returning
    once its run started, then every run waited for): ``runs`` runs of ``steps`` chained
    no-op jobs, by a pool of ``WORKERS`` workers started at once, or (``grown``) started as
    jobs need them; ``instrument`` (if any) installed while it is timed. Returns steps/s
    (wall clock, as the harness measures it), CPU µs per step and how many workers ran."""
    gc.collect()  # start clean, as the cordtrio sample does
    async with trio.open_nursery() as workers, trio.open_nursery() as run_tasks:
        floor = _Floor(run_tasks, steps)
        pool = _GrownPool(workers, floor.receive, WORKERS)
        if grown:
            pool.grow()
        else:
            for _ in range(WORKERS):
                workers.start_soon(_worker, floor.receive)
            pool.started = WORKERS
        await trio.lowlevel.checkpoint()  # the pool is waiting for jobs
        if instrument is not None:
            trio.lowlevel.add_instrument(instrument)
        wall, cpu = time.perf_counter(), time.process_time()
        for run_id in await submit_many(floor.submit, runs):
            record = await floor.wait_run(run_id)
            assert record["status"] == "succeeded"
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if instrument is not None:
            trio.lowlevel.remove_instrument(instrument)
        floor.send.close()
    total = runs * steps
    return {"steps": total, "seconds": wall, "steps_per_s": total / wall,
            "cpu_us_per_step": 1e6 * cpu / total, "workers": pool.started}
