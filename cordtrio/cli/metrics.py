"""The numbers ``cordtrio serve`` exposes on ``/metrics`` (Prometheus text format 0.0.4).

``ServeMetrics`` is fed by the engine hooks (``on_step_dispatched`` / ``on_step_finished``)
and renders itself together with figures read at scrape time (runs by status from the store,
the engine's active runs). No I/O here; ``serve`` does the reading.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Mapping

from ..model import StepStatus

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
"""Upper bounds (seconds) of the step result latency histogram."""

MAX_TRACKED = 100_000
"""Dispatches remembered while waiting for their step to finish (oldest dropped beyond)."""


BUS_FIGURES: dict[str, tuple[str, str]] = {
    "peers": ("gauge", "Client connections to the bus router."),
    "pending_jobs": ("gauge", "Jobs waiting for a worker of their topic."),
    "held_jobs": ("gauge", "Jobs delivered to a worker and not acknowledged yet."),
    "redelivered_jobs": ("counter", "Jobs handed to another worker after theirs was lost."),
    "lost_jobs": ("counter", "Jobs reported failed after too many lost workers."),
    "liveness_cuts": ("counter", "Bus clients cut off for not answering in time."),
    "slow_consumers": ("counter", "Bus clients cut off for not reading their packets."),
    "auth_failures": ("counter", "Bus connections refused for lacking the token."),
    "forbidden_ops": ("counter", "Job packets dropped: their sender may not publish them."),
}
"""Figures of the bus router ``/metrics`` shows (name → Prometheus type, help)."""


def bus_figures(router: object) -> dict[str, int]:
    """``BUS_FIGURES`` read from an ``NngRouter`` (``peers`` is its ``peer_count``)."""
    out = {}
    for name in BUS_FIGURES:
        value = getattr(router, "peer_count" if name == "peers" else name, None)
        if isinstance(value, int):
            out[name] = value
    return out


class Histogram:
    """A cumulative Prometheus histogram over fixed buckets."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == math.inf else _num(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{name}_sum {_num(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


class ServeMetrics:
    """Counters of one ``serve`` process. ``now`` is a monotonic clock (seconds)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.dispatched: Counter[str] = Counter()  # by step id is too much cardinality
        self.finished: Counter[str] = Counter()  # by final step status
        self.latency = Histogram()
        self._pending: dict[tuple[str, str], float] = {}

    def step_dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        """Engine hook: a job for ``step_id`` of ``run_id`` was published."""
        self.dispatched["all"] += 1
        key = (run_id, step_id)
        self._pending.pop(key, None)
        self._pending[key] = self._now()  # the latest attempt's dispatch
        if len(self._pending) > MAX_TRACKED:
            self._pending.pop(next(iter(self._pending)))

    def step_finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        """Engine hook: ``step_id`` of ``run_id`` reached ``status``; a step whose job this
        process dispatched contributes its dispatch → finish latency."""
        self.finished[str(getattr(status, "value", status))] += 1
        started = self._pending.pop((run_id, step_id), None)
        if started is not None:
            self.latency.observe(max(0.0, self._now() - started))

    def render(self, runs_by_status: Mapping[str, int], active_runs: int,
               redis_up: bool, persistent: bool | None = None,
               bus: Mapping[str, int] | None = None) -> str:
        """The exposition text, ending with a newline. ``persistent``: whether Redis keeps
        its data across a restart (checked at start; ``None``: unknown, not exported).
        ``bus``: the bus router's figures (``BUS_FIGURES`` names → values), rendered as
        ``cordtrio_bus_<name>`` (counters with ``_total``)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("cordtrio_up", "gauge", "1 while Redis answers, else 0.")
        out.append(f"cordtrio_up {1 if redis_up else 0}")
        if persistent is not None:
            family("cordtrio_redis_persistent", "gauge",
                   "1 when Redis keeps its data across a restart (AOF or RDB), 0 when a "
                   "restart loses every run.")
            out.append(f"cordtrio_redis_persistent {1 if persistent else 0}")
        family("cordtrio_runs", "gauge", "Runs in the store by status (capped per status).")
        for status in sorted(runs_by_status):
            out.append(f'cordtrio_runs{{status="{status}"}} {runs_by_status[status]}')
        family("cordtrio_active_runs", "gauge", "Runs with a task in this engine.")
        out.append(f"cordtrio_active_runs {active_runs}")
        family("cordtrio_steps_dispatched_total", "counter",
               "Jobs this engine published (every attempt and for-each item).")
        out.append(f"cordtrio_steps_dispatched_total {self.dispatched['all']}")
        family("cordtrio_steps_finished_total", "counter",
               "Steps this engine moved to a final status, by status.")
        for status in sorted(self.finished):
            out.append(f'cordtrio_steps_finished_total{{status="{status}"}} '
                       f"{self.finished[status]}")
        family("cordtrio_step_result_latency_seconds", "histogram",
               "Seconds from a step's last job dispatch to the step finishing.")
        out.extend(self.latency.render("cordtrio_step_result_latency_seconds"))
        for name, (kind, help_text) in BUS_FIGURES.items():
            if bus is not None and name in bus:
                metric = f"cordtrio_bus_{name}{'_total' if kind == 'counter' else ''}"
                family(metric, kind, help_text)
                out.append(f"{metric} {bus[name]}")
        return "\n".join(out) + "\n"


def _num(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}"


__all__ = ["BUS_FIGURES", "LATENCY_BUCKETS", "Histogram", "ServeMetrics", "bus_figures"]
