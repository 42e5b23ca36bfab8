"""The floor under W1: ``python -m benchmarks.floor``.

    python -m benchmarks.floor                          # the floor alone, one drive
    python -m benchmarks.floor --compare --rounds 7     # floor vs cordtrio, interleaved
    python -m benchmarks.floor --compare --rounds 7 --against ../other-checkout \\
        --against-python ../other-venv/bin/python --out benchmarks/results/floor.json

The floor is the leanest standalone Trio program of W1's shape: N runs x 5 dependent no-op
jobs, one task per run, a worker pool over a memory channel, a dict as the store. A worker
puts a job's result straight into its run's mailbox and wakes the parked run task with
``trio.lowlevel.reschedule``; nothing yields unless it must wait. No engine, no core, no
payload store, no retries: what cordtrio costs above this is the price of what it does
(durable state, the pure core, payloads, acknowledgements, cancellation, hooks).

``--compare`` measures, in one process and interleaved for ``--rounds`` rounds, the floor,
the floor with its pool started as jobs need it (``floor, pool grown``: as cordtrio's worker
starts its slots, so that a burst of no-op jobs is run by a few workers without a task
switch per job), the floor doing every W1 step's SPEC duties with plain objects
(``floor+duties``,
``benchmarks.floor_duties``: what the duties cost written the leanest way), the floor
carrying cordtrio's own core, memory store and payload store (``floor+core``,
``benchmarks.floor_core``: what the parts cost without the shell around them) and
cordtrio's in-memory W1 through the same harness code as ``python -m benchmarks``
(``measure.run_sample``: a fresh engine and worker per sample), and prints the median
steps/s of each and their ratios to the floor. ``--against DIR`` adds, in the same rounds,
W1 measured by another checkout's own harness (``python -m benchmarks`` run in ``DIR`` with
``--against-python``, one sample per round), so that two versions and the floor are
compared in one sitting. ``--out`` writes every sample and the medians as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .measure import run_sample
from .switches import TaskSteps
from .workloads import CHAIN_STEPS, WORKLOADS, submit_many

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


async def drive_floor(runs: int, steps: int = CHAIN_STEPS, *, grown: bool = False,
                      count_switches: bool = True) -> dict[str, float | None]:
    """One drive of the floor in W1's shape (runs submitted from 64 tasks, each returning
    once its run started, then every run waited for): ``runs`` runs of ``steps`` chained
    no-op jobs, by a pool of ``WORKERS`` workers started at once, or (``grown``) started as
    jobs need them. Returns steps/s (wall clock, as the harness measures it), CPU µs and
    task switches per step (None without ``count_switches``: the counting instrument runs
    on every task step and slows the floor by about a tenth, so timed comparisons leave it
    out, as cordtrio's samples do), and how many workers ran."""
    gc.collect()  # start clean, as the cordtrio sample does
    switches = TaskSteps() if count_switches else None
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
        if switches is not None:
            trio.lowlevel.add_instrument(switches)
        wall, cpu = time.perf_counter(), time.process_time()
        for run_id in await submit_many(floor.submit, runs):
            record = await floor.wait_run(run_id)
            assert record["status"] == "succeeded"
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if switches is not None:
            trio.lowlevel.remove_instrument(switches)
        floor.send.close()
    total = runs * steps
    return {"steps": total, "seconds": wall, "steps_per_s": total / wall,
            "cpu_us_per_step": 1e6 * cpu / total,
            "task_switches_per_step": switches.steps / total if switches else None,
            "workers": pool.started}


def cordtrio_w1(size: int) -> float:
    """cordtrio's in-memory W1 at ``size`` runs, one sample through the harness: steps/s.
    The collector first clears what earlier samples of this process left (as a fresh
    process of ``python -m benchmarks`` starts clean)."""
    gc.collect()
    sample = trio.run(run_sample, WORKLOADS["w1"], "memory", size)
    return sample.steps_per_s


def other_checkout_w1(checkout: str, python: str, size: int) -> float:
    """W1 on memory measured by another checkout's own harness (one sample): steps/s."""
    with tempfile.TemporaryDirectory(prefix="cordtrio-floor-") as tmp:
        out = Path(tmp) / "w1.json"
        subprocess.run(
            [python, "-m", "benchmarks", "--workload", "w1", "--backend", "memory",
             "--size", f"w1={size}", "--repeat", "1", "--out", str(out)],
            cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["results"][0]["steps_per_s_median"])


def compare(rounds: int, size: int, against: str = "", against_python: str = "",
            report: Any = print) -> dict[str, Any]:
    """Interleave the floor, cordtrio (and another checkout) for ``rounds`` rounds; return
    every sample, the medians and the ratios to the floor."""
    from .floor_core import drive_floor_core  # imports cordtrio's parts: not for the floor
    from .floor_duties import drive_floor_duties

    samples: dict[str, list[float]] = {"floor": [], "floor, pool grown": [],
                                       "floor+duties": [], "floor+duties, design": [],
                                       "floor+core": [], "cordtrio": []}
    if against:
        samples["against"] = []
    # Every drive timed without a Trio instrument, as cordtrio's samples are
    timed_floor = partial(drive_floor, size, count_switches=False)
    for r in range(rounds):
        samples["floor"].append(trio.run(timed_floor)["steps_per_s"])
        samples["floor, pool grown"].append(
            trio.run(partial(timed_floor, grown=True))["steps_per_s"])
        samples["floor+duties"].append(trio.run(drive_floor_duties, size)["steps_per_s"])
        samples["floor+duties, design"].append(
            trio.run(partial(drive_floor_duties, size, design=True))["steps_per_s"])
        gc.collect()
        samples["floor+core"].append(
            trio.run(partial(drive_floor_core, size, count_switches=False))["steps_per_s"])
        samples["cordtrio"].append(cordtrio_w1(size))
        if against:
            samples["against"].append(
                other_checkout_w1(against, against_python or sys.executable, size))
        report(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:,.0f}" for name, values in samples.items()) + " steps/s")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians["floor"]
    # On a shared machine the load drifts between rounds: a ratio within each round (its
    # samples close in time), then their median, is steadier than a ratio of medians.
    pairs = {"cordtrio/floor": ("cordtrio", "floor"),
             "cordtrio/floor, pool grown": ("cordtrio", "floor, pool grown"),
             "floor+duties/floor": ("floor+duties", "floor"),
             "floor+core/floor": ("floor+core", "floor"),
             "cordtrio/floor+duties": ("cordtrio", "floor+duties"),
             "floor+duties, design/floor": ("floor+duties, design", "floor"),
             "cordtrio/floor+duties, design": ("cordtrio", "floor+duties, design"),
             "cordtrio/floor+core": ("cordtrio", "floor+core")}
    if against:
        pairs["cordtrio/against"] = ("cordtrio", "against")
    return {"workload": "w1", "backend": "memory", "size": size, "rounds": rounds,
            "against": against, "samples_steps_per_s": samples,
            "median_steps_per_s": medians,
            "ratio_to_floor": {name: m / floor for name, m in medians.items()},
            "ratio_cordtrio_to_against": (medians["cordtrio"] / medians["against"]
                                          if against else None),
            "median_of_round_ratios": {
                label: statistics.median(x / y for x, y in zip(samples[a], samples[b],
                                                                strict=True))
                for label, (a, b) in pairs.items()}}


PARTS = {  # name: drive_floor_core's options (what of cordtrio the floor carries)
    "floor+core": {"store": False, "payloads": False},
    "floor+core+store": {"store": True, "payloads": False},
    "floor+core+payloads": {"store": False, "payloads": True},
    "floor+core+store+payloads": {"store": True, "payloads": True},
}


def parts(rounds: int, size: int, report: Any = print) -> dict[str, Any]:
    """Interleave, for ``rounds`` rounds, the floor, the floor carrying cordtrio's core
    alone, with its memory store, with its payload store, with both, and cordtrio; return
    every sample, the median µs per step (wall) of each, and what each part adds."""
    from .floor_core import drive_floor_core

    names = ["floor", *PARTS, "cordtrio"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        samples["floor"].append(
            trio.run(partial(drive_floor, size, count_switches=False))["steps_per_s"])
        for name, options in PARTS.items():
            gc.collect()
            samples[name].append(trio.run(partial(
                drive_floor_core, size, **options, count_switches=False))["steps_per_s"])
        samples["cordtrio"].append(cordtrio_w1(size))
        report(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:,.0f}" for name, values in samples.items()) + " steps/s")
    us = {name: 1e6 / statistics.median(values) for name, values in samples.items()}
    added = {
        "core (decide and the run's objects)": us["floor+core"] - us["floor"],
        "memory store": us["floor+core+store"] - us["floor+core"],
        "payload store": us["floor+core+payloads"] - us["floor+core"],
        "store and payloads together": us["floor+core+store+payloads"] - us["floor+core"],
        "the engine's shell (bus, worker, envelopes, API)":
            us["cordtrio"] - us["floor+core+store+payloads"],
    }
    return {"workload": "w1", "backend": "memory", "size": size, "rounds": rounds,
            "samples_steps_per_s": samples,
            "median_steps_per_s": {n: statistics.median(v) for n, v in samples.items()},
            "median_us_per_step": us, "us_per_step_added": added}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=WORKLOADS["w1"].default_sizes[0],
                        help="runs per drive (default: W1's memory size)")
    parser.add_argument("--compare", action="store_true",
                        help="interleave the floor and cordtrio's in-memory W1")
    parser.add_argument("--parts", action="store_true",
                        help="what cordtrio's core, store, payloads and shell each add to "
                             "the floor (interleaved rounds)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of --compare or --parts (5)")
    parser.add_argument("--against", default="",
                        help="another checkout whose harness measures W1 in the same rounds")
    parser.add_argument("--against-python", default="",
                        help="the Python that runs --against's harness (default: this one)")
    parser.add_argument("--out", default="", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.size < 1 or args.rounds < 1:
        parser.error("--size and --rounds must be >= 1")
    if args.against and not args.compare:
        parser.error("--against needs --compare")
    if args.parts and args.compare:
        parser.error("--parts and --compare are separate measurements")
    if args.parts:
        result = parts(args.rounds, args.size)
        for name, us in result["median_us_per_step"].items():
            print(f"{name:>26}: median {result['median_steps_per_s'][name]:>9,.0f} steps/s  "
                  f"{us:6.1f} µs per step")
        for part, us in result["us_per_step_added"].items():
            print(f"  + {us:6.1f} µs  {part}")
    elif args.compare:
        result = compare(args.rounds, args.size, args.against, args.against_python)
        med, ratio = result["median_steps_per_s"], result["ratio_to_floor"]
        for name in med:
            label = f"{name} ({args.against})" if name == "against" else name
            print(f"{label:>24}: median {med[name]:>9,.0f} steps/s  "
                  f"{ratio[name]:.2f} x floor")
        if args.against:
            print(f"cordtrio / against: {result['ratio_cordtrio_to_against']:.2f} x")
        print("median of the per-round ratios: " + ", ".join(
            f"{label} {value:.2f} x" for label, value in result["median_of_round_ratios"].items()))
    else:
        # timed without the switch-counting instrument, then counted in a drive of its own
        result = {"workload": "w1-floor", "size": args.size,
                  **trio.run(partial(drive_floor, args.size, count_switches=False))}
        counted = trio.run(drive_floor, args.size)
        result["task_switches_per_step"] = counted["task_switches_per_step"]
        print(f"floor, {args.size} runs x {CHAIN_STEPS} steps: {result['steps_per_s']:,.0f} "
              f"steps/s, {result['cpu_us_per_step']:.0f} µs CPU per step, "
              f"{result['task_switches_per_step']:.2f} task switches per step")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"python": platform.python_version(),
                                   "machine": platform.machine(), "cpus": os.cpu_count(),
                                   **result}, indent=2))
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
