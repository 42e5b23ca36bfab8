"""One measurement (a *sample*): a workload at one size on one backend, and its figures.

Figures per sample: steps/s and runs/s over the drive (wall clock), dispatch → result
latency per step (from the engine's ``on_step_dispatched`` / ``on_step_finished`` hooks; the
last attempt for retried steps), the process's peak RSS during the sample (Linux ``VmHWM``,
reset before each sample through ``/proc/self/clear_refs``), and, on Redis backends, the
commands the server executed during the drive (``INFO commandstats`` before and after).
CPU time per step of each process taking part (the engine's, a worker process's,
redis-server's), so a reader sees which one a backend is bound by.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from .backends import NEEDS_REDIS, Hooks, open_session
from .workloads import Workload

PROGRESS_INTERVAL = 0.2
HARNESS_COMMANDS = frozenset({"info", "dbsize"})
"""Commands the harness's own client sends, left out of the per-step counts."""


@dataclass
class Sample:
    """The figures of one sample (JSON-ready through ``asdict``)."""

    workload: str
    backend: str
    size: int
    steps: int
    runs: int
    seconds: float
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_rss_mib: float | None = None
    redis_commands: dict[str, int] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    round: int | None = None
    """Which round of the invocation it was taken in (its repetition), for the per-round
    ratios of samples taken side by side (``report.ratio_rows``)."""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else 0.0

    @property
    def redis_commands_per_step(self) -> float | None:
        if not self.redis_commands:
            return None
        return sum(self.redis_commands.values()) / self.steps

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(steps_per_s=self.steps_per_s, runs_per_s=self.runs_per_s,
                   redis_commands_per_step=self.redis_commands_per_step)
        return out


class LatencyRecorder:
    """Dispatch → result time per step, keyed by run and step (a retry's dispatch replaces
    the earlier one, so a retried step counts its last attempt)."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str], float] = {}
        self.latencies: list[float] = []
        self.finished = 0

    def dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        self.sent[(run_id, step_id)] = time.perf_counter()

    def on_finished(self, run_id: str, step_id: str, status: object) -> None:
        self.finished += 1
        t = self.sent.pop((run_id, step_id), None)
        if t is not None:
            self.latencies.append(time.perf_counter() - t)

    def hooks(self) -> Hooks:
        return Hooks(self.dispatched, self.on_finished)

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        if not self.latencies:
            return None, None
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return 1000 * ordered[len(ordered) // 2], 1000 * p99


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float | None:
    """This process's peak RSS since the last reset, in MiB (None where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


class RedisStats:
    """A plain (synchronous) client on the harness's server for what the harness itself
    asks: flushing between samples, ``INFO commandstats``, ``INFO memory`` and ``DBSIZE``.
    Its own ``INFO`` and ``DBSIZE`` calls are left out of the counts."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._client = redis.Redis.from_url(url)

    def flush(self) -> None:
        self._client.flushall()

    def commandstats(self) -> dict[str, int]:
        stats = self._client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
                if isinstance(v, dict) and "calls" in v}

    def key_count(self) -> int:
        """Keys in the server's database (``DBSIZE``): a progress count for peers."""
        return int(self._client.dbsize())

    def used_memory(self) -> int:
        return int(self._client.info("memory")["used_memory"])

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, user and system (``INFO cpu``)."""
        cpu = self._client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def close(self) -> None:
        self._client.close()


def process_cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of process ``pid`` so far (Linux ``/proc/PID/stat``; a
    clock-tick resolution, 10 ms), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU time per step of the processes in a sample: this (engine) process, the worker's
    own process if it has one, and redis-server. Read just before and after the drive."""

    def __init__(self, worker_pid: int | None, redis: RedisStats | None) -> None:
        self._worker_pid, self._redis = worker_pid, redis
        self._start = self._read()

    def _read(self) -> dict[str, float | None]:
        return {
            "engine": time.process_time(),
            "worker": (process_cpu_seconds(self._worker_pid)
                       if self._worker_pid is not None else None),
            "redis": self._redis.cpu_seconds() if self._redis is not None else None,
        }

    def per_step_us(self, steps: int) -> dict[str, float]:
        """``cpu_us_per_step_<process>`` for each process that could be read."""
        end = self._read()
        return {f"cpu_us_per_step_{name}": 1e6 * (after - before) / steps
                for name, after in end.items()
                if after is not None and (before := self._start[name]) is not None
                and steps > 0}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two ``commandstats`` snapshots, without the harness's own
    ``info`` and ``dbsize`` calls, largest first."""
    delta = {name: n - before.get(name, 0) for name, n in after.items()
             if name not in HARNESS_COMMANDS}
    return dict(sorted(((k, v) for k, v in delta.items() if v > 0), key=lambda kv: -kv[1]))


async def run_sample(workload: Workload, backend: str, size: int,
                     redis: RedisStats | None = None,
                     on_progress: Callable[[int], None] | None = None) -> Sample:
    """Measure ``workload`` at ``size`` on ``backend`` once (a fresh engine and worker)."""
    if backend in NEEDS_REDIS and redis is None:
        raise ValueError(f"backend {backend!r} needs a redis-server")
    wf = workload.workflow()
    recorder = LatencyRecorder()
    if redis is not None and backend in NEEDS_REDIS:
        redis.flush()
    else:
        redis = None
    reset_peak_rss()
    async with open_session(backend, wf, recorder.hooks(),
                            redis_url=redis.url if redis else None,
                            server_memory=redis.used_memory if redis else None) as session:
        before = redis.commandstats() if redis else {}
        cpu = CpuMeter(session.worker_pid, redis)
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(_report_progress, recorder, on_progress)
            measured = await workload.drive(session.engine, wf, size, session.probe)
            nursery.cancel_scope.cancel()
        cpu_per_step = cpu.per_step_us(measured.steps)
        after = redis.commandstats() if redis else {}
    p50, p99 = recorder.percentiles_ms()
    return Sample(workload.name, backend, size, measured.steps, measured.runs,
                  measured.seconds, p50, p99, peak_rss_mib(), command_delta(before, after),
                  {**measured.extra, **cpu_per_step})


async def _report_progress(recorder: LatencyRecorder, report: Callable[[int], None]) -> None:
    while True:
        report(recorder.finished)
        await trio.sleep(PROGRESS_INTERVAL)
