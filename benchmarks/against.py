"""Another checkout measured in the same invocation: ``python -m benchmarks --against DIR``.

A speed-up is a ratio between two versions, and on a shared machine the load drifts from
minute to minute: two invocations minutes apart can differ by more than the change being
measured. With ``--against DIR`` every repetition of every (workload, backend, size) is
measured twice in a row, once by this checkout and once by ``DIR``'s own harness (``python
-m benchmarks`` run there by ``--against-python``), the order alternating between
repetitions. Both are measured the same way: one sample per fresh harness process (a
process that measured earlier samples carries their heap into the next), with the Redis
backends on a redis-server that process starts. The report adds a table of this/other
ratios: the ratio of the medians, and the median of the per-repetition ratios (each pair
measured seconds apart, so the steadier figure).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from .measure import Sample
from .report import AGAINST_SUFFIX as SUFFIX
from .report import Summary, round_ratios


def python_path(python: str) -> str:
    """An interpreter given as a path, made absolute: the other checkout's processes run in
    its directory, where a relative path would name something else. A bare name (found on
    ``PATH``) is left as it is."""
    return os.path.abspath(python) if os.sep in python else python


@dataclass(frozen=True)
class Against:
    """A checkout (its root, where ``python -m benchmarks`` runs) and its Python;
    ``suffix`` labels its samples' backend (``AGAINST_SUFFIX`` for the other one)."""

    checkout: str
    python: str
    suffix: str = SUFFIX

    def sample(self, workload: str, backend: str, size: int) -> Sample:
        """One sample of ``workload`` at ``size`` on ``backend``, by that checkout's harness
        in a process of its own."""
        with tempfile.TemporaryDirectory(prefix="cordtrio-against-") as tmp:
            out = Path(tmp) / "sample.json"
            done = subprocess.run(
                [self.python, "-m", "benchmarks", "--workload", workload, "--backend",
                 backend, "--size", f"{workload}@{backend}={size}", "--repeat", "1",
                 "--out", str(out)],
                cwd=self.checkout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, check=False)
            if done.returncode != 0 or not out.exists():
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"{self.checkout}: exit {done.returncode}: {tail[0]}")
            return sample_from_json(json.loads(out.read_text()), workload, backend, size,
                                    self.suffix)


def sample_from_json(data: dict[str, Any], workload: str, backend: str, size: int,
                     suffix: str = SUFFIX) -> Sample:
    """The one sample of a ``--repeat 1`` result file, its backend labelled ``suffix``."""
    rows = [r for r in data.get("results", [])
            if (r.get("workload"), r.get("backend"), r.get("size")) == (workload, backend, size)]
    if not rows or not rows[0].get("samples"):
        raise RuntimeError(f"no {workload} sample on {backend} at size {size} in the "
                           f"other checkout's results ({'; '.join(data.get('notes', []))})")
    raw = rows[0]["samples"][0]
    return Sample(workload, backend + suffix, size, int(raw["steps"]), int(raw["runs"]),
                  float(raw["seconds"]), raw.get("latency_p50_ms"), raw.get("latency_p99_ms"),
                  raw.get("peak_rss_mib"), dict(raw.get("redis_commands") or {}),
                  dict(raw.get("extra") or {}))


def against_rows(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """This/other steps/s for every (workload, backend, size) both measured: the ratio of
    the medians and the median of the per-repetition ratios (repetition k of each)."""
    theirs = {(s.workload, s.backend[: -len(SUFFIX)], s.size): s for s in summaries
              if s.backend.endswith(SUFFIX)}
    rows = []
    for ours in summaries:
        other = theirs.get((ours.workload, ours.backend, ours.size))
        if other is None:
            continue
        mine, their = ours.median("steps_per_s"), other.median("steps_per_s")
        # each repetition's pair by its round (a version that failed one leaves no pair,
        # rather than shifting the later ones); by position for samples without rounds
        pairs = round_ratios(ours.samples, other.samples) or [
            a.steps_per_s / b.steps_per_s
            for a, b in zip(ours.samples, other.samples, strict=False) if b.steps_per_s]
        if not mine or not their or not pairs:
            continue
        rows.append({"workload": ours.workload, "backend": ours.backend, "size": ours.size,
                     "steps_per_s": mine, "against_steps_per_s": their,
                     "ratio_of_medians": mine / their,
                     "median_of_ratios": statistics.median(pairs),
                     "ratios": pairs})
    return rows


def against_table(rows: Sequence[dict[str, Any]], checkout: str) -> Table:
    table = Table(title=f"this checkout / {checkout}, same invocation, alternated "
                        "(steps/s)", title_justify="left")
    for col in ("workload", "backend", "size", "this", "other", "ratio of medians",
                "median of ratios"):
        table.add_column(col, justify="left" if col in ("workload", "backend") else "right")
    for r in rows:
        table.add_row(r["workload"], r["backend"], f"{r['size']:,}", f"{r['steps_per_s']:,.0f}",
                      f"{r['against_steps_per_s']:,.0f}", f"{r['ratio_of_medians']:.2f}x",
                      f"{r['median_of_ratios']:.2f}x")
    return table


def this_checkout(python: str) -> Against:
    """This checkout, measured the same way as the other one (unlabelled samples)."""
    return Against(str(Path(__file__).resolve().parents[1]), python, "")


__all__ = ["SUFFIX", "Against", "against_rows", "against_table", "python_path",
           "sample_from_json", "this_checkout"]
