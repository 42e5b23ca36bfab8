"""Summaries of samples: the printed tables (one per workload, plus peer ratios) and JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .measure import Sample

TOP_COMMANDS = 4

AGAINST_SUFFIX = " (against)"
"""Appended to the backend name of another checkout's samples (``benchmarks.against``)."""


@dataclass
class Summary:
    """The repetitions of one (workload, backend, size): medians with their min–max."""

    workload: str
    backend: str
    size: int
    samples: list[Sample]

    def _values(self, attr: str) -> list[float]:
        return [v for s in self.samples if (v := getattr(s, attr)) is not None]

    def median(self, attr: str) -> float | None:
        values = self._values(attr)
        return statistics.median(values) if values else None

    def span(self, attr: str) -> tuple[float, float] | None:
        values = self._values(attr)
        return (min(values), max(values)) if values else None

    def extra(self, key: str) -> float | None:
        values = [s.extra[key] for s in self.samples if key in s.extra]
        return statistics.median(values) if values else None

    @property
    def peak_rss_mib(self) -> float | None:
        values = self._values("peak_rss_mib")
        return max(values) if values else None

    def commands_per_step(self) -> dict[str, float]:
        """Redis commands per step over all repetitions, split by command, largest first."""
        steps = sum(s.steps for s in self.samples if s.redis_commands)
        total: dict[str, int] = {}
        for s in self.samples:
            for name, n in s.redis_commands.items():
                total[name] = total.get(name, 0) + n
        if not steps:
            return {}
        return {name: n / steps for name, n in sorted(total.items(), key=lambda kv: -kv[1])}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workload": self.workload, "backend": self.backend,
                               "size": self.size, "repetitions": len(self.samples)}
        for attr in ("steps_per_s", "runs_per_s", "seconds"):
            span = self.span(attr)
            out[f"{attr}_median"] = self.median(attr)
            out[f"{attr}_min"], out[f"{attr}_max"] = span if span else (None, None)
        out["latency_p50_ms_median"] = self.median("latency_p50_ms")
        out["latency_p99_ms_median"] = self.median("latency_p99_ms")
        out["peak_rss_mib_max"] = self.peak_rss_mib
        per_step = self.commands_per_step()
        out["redis_commands_per_step"] = sum(per_step.values()) if per_step else None
        out["redis_commands_per_step_by_command"] = per_step
        keys = sorted({k for s in self.samples for k in s.extra})
        out["extra_median"] = {k: self.extra(k) for k in keys}
        out["samples"] = [s.to_json() for s in self.samples]
        return out


def summarize(samples: Iterable[Sample]) -> list[Summary]:
    """Group samples by (workload, backend, size), in the order they were first measured."""
    groups: dict[tuple[str, str, int], Summary] = {}
    for s in samples:
        key = (s.workload, s.backend, s.size)
        groups.setdefault(key, Summary(*key, samples=[])).samples.append(s)
    return list(groups.values())


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _rate(summary: Summary, attr: str, fmt: str) -> str:
    med, span = summary.median(attr), summary.span(attr)
    if med is None or span is None:
        return "—"
    if len(summary.samples) == 1:
        return _num(med, fmt)
    return f"{_num(med, fmt)} ({_num(span[0], fmt)}–{_num(span[1], fmt)})"


def _commands(summary: Summary) -> tuple[str, str]:
    """Redis commands per step, and the top commands by count."""
    per_step = summary.commands_per_step()
    if not per_step:
        return "—", ""
    top = list(per_step.items())[:TOP_COMMANDS]
    return f"{sum(per_step.values()):.1f}", " ".join(f"{n} {v:.1f}" for n, v in top)


CPU_PROCESSES = ("engine", "worker", "redis")


def _cpu(summary: Summary) -> str:
    """CPU µs per step of the engine process, a worker process and redis-server (medians;
    ``—`` for a process the sample does not have or could not read)."""
    return " / ".join(_num(summary.extra(f"cpu_us_per_step_{name}"), ",.0f")
                      for name in CPU_PROCESSES)


def workload_table(workload: str, summary: str, rows: Sequence[Summary]) -> Table:
    """One workload's table: a row per backend and size."""
    table = Table(title=f"{workload}: {summary}", title_justify="left")
    columns = ["backend", "size", "steps/s", "runs/s", "p50 ms", "p99 ms", "RSS MiB",
               "CPU µs/step engine / worker / redis", "redis/step",
               "top redis commands per step"]
    redis = any(r.commands_per_step() for r in rows)
    if not redis:  # memory only: no Redis columns
        columns = columns[:-2]
    if workload == "w4":  # CPU covers the park phase too, which steps/s leaves out: JSON only
        columns.remove("CPU µs/step engine / worker / redis")
        columns[4:6] = ["park s", "heap B/wait", *(["redis B/wait"] if redis else []),
                        "tasks waiting"]
    for col in columns:
        table.add_column(col, justify="left" if col.startswith(("backend", "top")) else "right")
    for r in rows:
        cells = [r.backend, f"{r.size:,}", _rate(r, "steps_per_s", ",.0f"),
                 _rate(r, "runs_per_s", ",.1f")]
        if workload == "w4":
            cells += [_num(r.extra("park_seconds"), ".1f"),
                      _num(r.extra("heap_bytes_per_waiting_run"), ",.0f"),
                      *([_num(r.extra("server_bytes_per_waiting_run"), ",.0f")] if redis else []),
                      _num(r.extra("active_run_tasks_while_waiting"), ",.0f")]
        else:
            cells += [_num(r.median("latency_p50_ms"), ".1f"),
                      _num(r.median("latency_p99_ms"), ".1f")]
        cells += [_num(r.peak_rss_mib, ",.0f"), *([_cpu(r)] if workload != "w4" else []),
                  *(_commands(r) if redis else ())]
        table.add_row(*cells)
    return table


def ratio_rows(summaries: Sequence[Summary], peers: Sequence[str]) -> list[dict[str, Any]]:
    """cordtrio/peer throughput ratios for each peer measurement, against every cordtrio
    backend measured on the same workload at the same size in the same invocation. A peer
    that capped its size (no cordtrio measurement at its size at all) is compared with each
    backend's nearest size instead; both sizes are in the row."""
    rows = []
    for peer in (s for s in summaries if s.backend in peers):
        mine = [s for s in summaries if s.backend not in peers and s.workload == peer.workload
                and not s.backend.endswith(AGAINST_SUFFIX)]
        exact = [s for s in mine if s.size == peer.size]
        chosen: dict[str, Summary] = {s.backend: s for s in exact}
        if not exact:
            for s in mine:
                best = chosen.get(s.backend)
                if best is None or abs(s.size - peer.size) < abs(best.size - peer.size):
                    chosen[s.backend] = s
        for ours in chosen.values():
            ours_rate, theirs = ours.median("steps_per_s"), peer.median("steps_per_s")
            if ours_rate and theirs:
                rows.append({"workload": peer.workload, "size": ours.size,
                             "peer_size": peer.size, "cordtrio_backend": ours.backend,
                             "peer": peer.backend, "cordtrio_steps_per_s": ours_rate,
                             "peer_steps_per_s": theirs, "ratio": ours_rate / theirs,
                             "ratio_per_round": per_round_ratio(ours, peer)})
    return rows


def round_ratios(ours: Sequence[Sample], theirs: Sequence[Sample]) -> list[float]:
    """``ours``/``theirs`` steps/s for each round both were measured in (their samples
    taken side by side), in ``ours``' order; empty when no round is shared."""
    by_round = {s.round: s.steps_per_s for s in theirs
                if s.round is not None and s.steps_per_s}
    return [s.steps_per_s / by_round[s.round] for s in ours
            if s.round is not None and s.round in by_round and s.steps_per_s]


def per_round_ratio(ours: Summary, theirs: Summary) -> float | None:
    """The median of ``round_ratios``: steadier than the ratio of the medians when the
    machine's load drifts during the invocation. None without a shared round."""
    ratios = round_ratios(ours.samples, theirs.samples)
    return statistics.median(ratios) if ratios else None


def ratio_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="cordtrio / peer, same invocation (median steps/s; per round: the "
                  "median of the ratios of the samples taken side by side)",
                  title_justify="left")
    for col in ("workload", "size", "cordtrio backend", "cordtrio steps/s", "peer",
                "peer steps/s", "ratio", "per round"):
        table.add_column(col, justify="right" if "steps" in col
                         or col in ("size", "ratio", "per round") else "left")
    for r in rows:
        size = f"{r['size']:,}" + ("" if r["peer_size"] == r["size"]
                                   else f" (peer {r['peer_size']:,})")
        per_round = r.get("ratio_per_round")
        table.add_row(r["workload"], size, r["cordtrio_backend"],
                      f"{r['cordtrio_steps_per_s']:,.0f}", r["peer"],
                      f"{r['peer_steps_per_s']:,.0f}", f"{r['ratio']:.2f}x",
                      "—" if per_round is None else f"{per_round:.2f}x")
    return table


def print_report(console: Console, summaries: Sequence[Summary], titles: dict[str, str],
                 peers: Sequence[str]) -> list[dict[str, Any]]:
    """Print a table per workload and the peer ratios; return the ratio rows."""
    for workload in dict.fromkeys(s.workload for s in summaries):
        rows = [s for s in summaries if s.workload == workload]
        console.print(workload_table(workload, titles.get(workload, ""), rows))
    ratios = ratio_rows(summaries, peers)
    if ratios:
        console.print(ratio_table(ratios))
    return ratios


def write_json(path: Path, summaries: Sequence[Summary], ratios: Sequence[dict[str, Any]],
               settings: dict[str, Any], notes: Sequence[str],
               against: Sequence[dict[str, Any]] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "settings": settings, "notes": list(notes),
        "results": [s.to_json() for s in summaries], "ratios": list(ratios),
        "against": list(against),
    }, indent=2))
