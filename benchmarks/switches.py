"""How many Trio task switches one workflow step takes: ``python -m benchmarks.switches``.

    python -m benchmarks.switches --workload w1 --backend memory --size 1000

One drive of the workload (same sessions as ``python -m benchmarks``) with a
``trio.abc.Instrument`` counting ``before_task_step`` — every time Trio runs a task until
its next schedule point — divided by the workload's steps. Also the time the cyclic garbage
collector took (``gc.callbacks``) and CPU time per step. docs/architecture.md (*One event,
end to end*) explains the count on the in-memory backends. The Redis backends run on a
redis-server started (without persistence) for the drive; with ``redis-nng`` the figures are
the engine process's (the worker runs in its own).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import trio

from .backends import BACKENDS, NEEDS_REDIS, open_session
from .measure import LatencyRecorder
from .workloads import WORKLOADS


class TaskSteps(trio.abc.Instrument):
    """Counts task steps (``before_task_step``)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


class GcTime:
    """Seconds spent in the cyclic garbage collector, and how many collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1


async def count(workload: str, backend: str, size: int, redis_url: str | None = None
                ) -> dict[str, float]:
    """Drive ``workload`` once and return its figures per step."""
    wl = WORKLOADS[workload]
    wf = wl.workflow()
    async with open_session(backend, wf, LatencyRecorder().hooks(),
                            redis_url=redis_url) as session:
        steps, collector = TaskSteps(), GcTime()
        trio.lowlevel.add_instrument(steps)
        gc.callbacks.append(collector)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            measured = await wl.drive(session.engine, wf, size, session.probe)
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            gc.callbacks.remove(collector)
            trio.lowlevel.remove_instrument(steps)
    n = measured.steps
    return {"steps": n, "task_switches_per_step": steps.steps / n,
            "steps_per_s": n / wall, "cpu_us_per_step": 1e6 * cpu / n,
            "gc_us_per_step": 1e6 * collector.seconds / n, "gc_collections": collector.collections}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.switches",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="w1", choices=sorted(WORKLOADS))
    parser.add_argument("--backend", default="memory", choices=BACKENDS)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = None
        if args.backend in NEEDS_REDIS:
            from cordtrio.backends.redis.testing import run_redis_server  # optional
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            url = stack.enter_context(run_redis_server(directory)).url
        got = trio.run(count, args.workload, args.backend, args.size, url)
    print(f"{args.workload} on {args.backend}, size {args.size}: {got['steps']:.0f} steps, "
          f"{got['task_switches_per_step']:.2f} task switches per step, "
          f"{got['steps_per_s']:,.0f} steps/s, {got['cpu_us_per_step']:.0f} µs CPU per step, "
          f"GC {got['gc_us_per_step']:.1f} µs per step ({got['gc_collections']:.0f} "
          "collections)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
