"""Where the engine process spends its time on one workload: ``python -m benchmarks.profile``.

    python -m benchmarks.profile --workload w1 --backend memory --size 1000
    python -m benchmarks.profile --workload w1 --backend redis-nng --size 100 --top 30 \\
        --out benchmarks/results/profile-w1-redis-nng.json

One drive of the workload (same sessions as ``python -m benchmarks``: fresh engine and
worker, a redis-server started and stopped for the Redis backends) under ``cProfile``, so
every function call is counted, not sampled. Prints the share of self time by *area*
(core, engine shell, worker, stores, bus, Trio, redis-py, the asyncio bridge, codecs...)
and the top functions by self time. With ``redis-nng`` the worker runs in its own process
and is not in the profile: what is shown is the engine process.

``--cpu`` times functions by the Trio thread's CPU time (``time.thread_time``) instead of
the wall clock: on a busy machine a syscall that wakes another process (a send to
redis-server, a thread hand-off) is often descheduled, and the wall clock charges that wait
to it; CPU time shows what the process itself spends. Reading that clock is a syscall per
call, so functions called very often (``isinstance``, ``dict.get``) come out inflated: compare
areas, not the two modes' totals.

cProfile slows Python code down (about 2x here), so steps/s under the profiler are not the
benchmark's figures; the shares are what this is for. They answer "what would make this
faster", and the JSON (``--out``) lets two profiles be compared (before/after a change).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from .backends import BACKENDS, NEEDS_REDIS, open_session
from .measure import LatencyRecorder, RedisStats
from .workloads import WORKLOADS

AREAS: tuple[tuple[str, str], ...] = (
    ("cordtrio/core/", "core (decide)"),
    ("cordtrio/expr/", "core (expressions)"),
    ("cordtrio/engine/", "engine shell"),
    ("cordtrio/worker.py", "worker"),
    ("backends/memory/bus", "memory bus"),
    ("backends/memory/", "memory store/payloads"),
    ("backends/redis/", "redis backend"),
    ("backends/nng/", "nng bus"),
    ("cordtrio/run_doc", "model (runs)"),
    ("cordtrio/workflow_doc", "model (workflows)"),
    ("cordtrio/fields", "model (fields)"),
    ("cordtrio/protocol", "protocol"),
    ("cordtrio/", "cordtrio (other)"),
    ("benchmarks/", "harness"),
    ("/redis/", "redis-py"),  # before asyncio/: redis/asyncio/ is redis-py's
    ("hiredis", "redis-py"),
    ("trio_asyncio/", "asyncio bridge"),
    ("asyncio/", "asyncio bridge"),
    ("/trio/", "trio"),
    ("outcome", "trio"),
    ("/pynng/", "pynng"),
    ("cbor2", "codecs"),
    ("json/", "codecs"),
    ("{built-in method _json", "codecs"),
    ("datetime", "datetime"),
)


ROOT = str(Path(__file__).resolve().parent.parent).replace("\\", "/") + "/"
"""The checkout this harness runs from: its paths are shown relative to it."""


def area_of(filename: str) -> str:
    """The area a function's file belongs to (``other`` when none matches)."""
    if filename == "~":  # C functions: dict.get, isinstance, list.append...
        return "builtins"
    path = filename.replace("\\", "/")
    for marker, area in AREAS:
        if marker in path:
            return area
    return "other"


def short(filename: str, line: int, name: str) -> str:
    """``pkg/module.py:line(name)`` from an absolute path (site-packages trimmed)."""
    path = filename.replace("\\", "/").removeprefix(ROOT)
    for cut in ("site-packages/", "/lib/python3"):
        if cut in path:
            path = path.split(cut, 1)[1]
            break
    return f"{path}:{line}({name})" if line else name


def summarize_profile(stats: pstats.Stats, top: int) -> dict[str, Any]:
    """Self time by area and the ``top`` functions by self time."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1e-12
    areas: dict[str, float] = {}
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        area = area_of(filename)
        areas[area] = areas.get(area, 0.0) + tottime
        rows.append({"function": short(filename, line, name), "area": area, "calls": ncalls,
                     "self_s": tottime, "self_pct": 100 * tottime / total, "cum_s": cumtime})
    rows.sort(key=lambda r: -r["self_s"])
    by_area = [{"area": a, "self_s": s, "self_pct": 100 * s / total}
               for a, s in sorted(areas.items(), key=lambda kv: -kv[1])]
    return {"total_self_s": total, "areas": by_area, "top": rows[:top]}


async def _profile(workload_name: str, backend: str, size: int, redis: RedisStats | None,
                   cpu: bool = False) -> tuple[pstats.Stats, float, int]:
    workload = WORKLOADS[workload_name]
    wf = workload.workflow()
    recorder = LatencyRecorder()
    if redis is not None:
        redis.flush()
    async with open_session(backend, wf, recorder.hooks(),
                            redis_url=redis.url if redis else None,
                            server_memory=redis.used_memory if redis else None) as session:
        profiler = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        measured = await workload.drive(session.engine, wf, size, session.probe)
        profiler.disable()
        seconds = time.perf_counter() - start
    return pstats.Stats(profiler), seconds, measured.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="w1", choices=sorted(WORKLOADS))
    parser.add_argument("--backend", default="memory", choices=BACKENDS)
    parser.add_argument("--size", type=int, default=0,
                        help="workload size (default: the benchmark's first default size)")
    parser.add_argument("--top", type=int, default=20, help="functions listed (default 20)")
    parser.add_argument("--out", default="", help="write the profile summary as JSON")
    parser.add_argument("--cpu", action="store_true",
                        help="time by the thread's CPU time, not the wall clock")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    size = args.size or (workload.default_sizes if args.backend == "memory"
                         else workload.remote_sizes)[0]
    console = Console()
    with ExitStack() as stack:
        redis: RedisStats | None = None
        if args.backend in NEEDS_REDIS:
            from cordtrio.backends.redis.testing import run_redis_server

            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="cordtrio-prof-"))
            server = stack.enter_context(run_redis_server(directory))
            redis = RedisStats(server.url)
            stack.callback(redis.close)
        stats, seconds, steps = trio.run(_profile, args.workload, args.backend, size, redis,
                                          args.cpu)
    summary = summarize_profile(stats, args.top)
    summary.update(workload=args.workload, backend=args.backend, size=size, steps=steps,
                   seconds_under_profiler=seconds, timer="thread CPU" if args.cpu else "wall")
    console.print(f"{args.workload} on {args.backend}, size {size}: {steps:,} steps in "
                  f"{seconds:.2f} s under cProfile ({steps / seconds:,.0f} steps/s, "
                  f"{1e6 * summary['total_self_s'] / steps:,.0f} us of profiled "
                  f"{'CPU' if args.cpu else 'wall'} time per step)")
    areas = Table("area", "self s", "share", "us/step", title="self time by area")
    for row in summary["areas"]:
        areas.add_row(row["area"], f"{row['self_s']:.3f}", f"{row['self_pct']:.1f}%",
                      f"{1e6 * row['self_s'] / steps:.1f}")
    console.print(areas)
    top = Table("function", "area", "calls", "self s", "share", "cum s",
                title=f"top {args.top} functions by self time")
    for row in summary["top"]:
        top.add_row(row["function"], row["area"], f"{row['calls']:,}", f"{row['self_s']:.3f}",
                    f"{row['self_pct']:.1f}%", f"{row['cum_s']:.3f}")
    console.print(top)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
        console.print(f"profile summary written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
