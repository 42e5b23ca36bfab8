"""Throughput benchmarks of cordtrio on the in-memory backends (a baseline; see issue 6).

    python -m benchmarks                       # W1 and W2, 3 repetitions each
    python -m benchmarks --workload w2 --size 10000 --repeat 5 --out results.json

Workloads (no-op handlers returning a small dict, worker in-process):
  w1  chains: RUNS runs x 5 dependent steps, all in flight at once
  w2  fan-out: one run, for_each over SIZE items with max_parallel 100, then a join step

Prints a table (median and min-max of steps/s, runs/s, dispatch->result latency p50/p99,
peak RSS) and writes machine-readable results as JSON (default
benchmarks/results/latest.json). Real clock, real time: numbers are noisy on a shared
machine, which is why medians of several repetitions are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from cordtrio import Job, Workflow, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore


@dataclass
class Sample:
    workload: str
    size: int
    steps: int
    runs: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds


def _workflow(workload: str) -> Workflow:
    if workload == "w1":
        return Workflow.from_dict({"id": "w1", "steps": {
            f"s{i}": {"topic": "job.noop", "depends_on": [f"s{i - 1}"] if i else []}
            for i in range(5)}})
    return Workflow.from_dict({"id": "w2", "steps": {
        "each": {"topic": "job.noop", "for_each": "input.items", "max_parallel": 100,
                 "input": {"n": "${item}"}},
        "join": {"topic": "job.noop", "depends_on": ["each"]}}})


async def _once(workload: str, size: int) -> Sample:
    store, bus, payloads = MemoryStore(), MemoryBus(), MemoryPayloadStore()
    wf = _workflow(workload)
    await store.save_workflow(wf)
    sent: dict[str, float] = {}
    latencies: list[float] = []

    def dispatched(run_id: str, step_id: str, job_id: str) -> None:
        sent[f"{run_id}/{step_id}"] = time.perf_counter()

    def finished(run_id: str, step_id: str, status: object) -> None:
        t = sent.pop(f"{run_id}/{step_id}", None)
        if t is not None:
            latencies.append(time.perf_counter() - t)

    async def noop(job: Job) -> dict[str, Any]:
        return {"ok": True}

    async with (
        open_engine(store, bus, payloads=payloads, on_step_dispatched=dispatched,
                    on_step_finished=finished) as engine,
        open_worker(bus, payloads, {"job.noop": noop}, max_concurrency=256),
    ):
        start = time.perf_counter()
        if workload == "w1":
            ids = [await engine.submit(wf.id) for _ in range(size)]
            steps, runs = size * 5, size
        else:
            ids = [await engine.submit(wf.id, {"items": list(range(size))})]
            steps, runs = size + 1, 1
        for run_id in ids:
            run = await engine.wait_run(run_id)
            if run.status != "succeeded":
                raise SystemExit(f"run {run_id} ended {run.status.value}")
        seconds = time.perf_counter() - start
    latencies.sort()
    return Sample(workload, size, steps, runs, seconds,
                  1000 * latencies[len(latencies) // 2],
                  1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["w1", "w2", "all"], default="all")
    parser.add_argument("--size", type=int, default=0,
                        help="runs for w1 (default 1000), items for w2 (default 10000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    args = parser.parse_args(argv)
    console = Console()
    workloads = ["w1", "w2"] if args.workload == "all" else [args.workload]
    results: list[dict[str, Any]] = []
    table = Table(title="cordtrio, in-memory backends (median, min-max)")
    for col in ("workload", "size", "steps/s", "runs/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for workload in workloads:
        size = args.size or (1000 if workload == "w1" else 10000)
        samples = []
        for i in range(args.repeat):
            with console.status(f"{workload} size {size}: repetition {i + 1}/{args.repeat}"):
                samples.append(trio.run(_once, workload, size))
        sps = [s.steps_per_s for s in samples]
        rps = [s.runs_per_s for s in samples]
        table.add_row(
            workload, str(size),
            f"{statistics.median(sps):,.0f} ({min(sps):,.0f}-{max(sps):,.0f})",
            f"{statistics.median(rps):,.1f}",
            f"{statistics.median(s.latency_p50_ms for s in samples):.2f}",
            f"{statistics.median(s.latency_p99_ms for s in samples):.2f}",
        )
        results.append({
            "workload": workload, "size": size,
            "steps_per_s_median": statistics.median(sps), "steps_per_s_min": min(sps),
            "steps_per_s_max": max(sps), "runs_per_s_median": statistics.median(rps),
            "samples": [asdict(s) for s in samples],
        })
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(table)
    console.print(f"peak RSS {peak_rss_mib:,.0f} MiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"python": platform.python_version(), "machine": platform.machine(),
                               "peak_rss_mib": peak_rss_mib, "results": results}, indent=2))
    console.print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
