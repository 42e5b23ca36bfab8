"""The PNG plot: cost per step (µs, the inverse of steps/s) against size, one panel per
workload, one line per backend or peer, error bars from the min–max of the repetitions.

matplotlib is in the ``bench`` extra; without it ``plot`` raises ``PlotUnavailable`` with
the reason, and the harness says so and skips the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .report import Summary


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


def plot(path: Path, summaries: Sequence[Summary], titles: dict[str, str]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(f"matplotlib is not installed ({exc}); "
                              "pip install 'cordtrio[bench]' for --plot") from None
    workloads = list(dict.fromkeys(s.workload for s in summaries))
    if not workloads:
        return
    cols = min(3, len(workloads))
    rows = math.ceil(len(workloads) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {b: palette[i % len(palette)]
              for i, b in enumerate(dict.fromkeys(s.backend for s in summaries))}
    for ax, workload in zip(axes.flat, workloads, strict=False):
        mine = [s for s in summaries if s.workload == workload]
        for backend in dict.fromkeys(s.backend for s in mine):
            points = sorted((s for s in mine if s.backend == backend), key=lambda s: s.size)
            xs, ys, lo, hi = [], [], [], []
            for s in points:
                med, span = s.median("steps_per_s"), s.span("steps_per_s")
                if not med or not span or not span[0]:
                    continue
                cost = 1e6 / med
                xs.append(s.size)
                ys.append(cost)
                lo.append(cost - 1e6 / span[1])
                hi.append(1e6 / span[0] - cost)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=backend,
                            color=colors[backend])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("size (" + ("items" if workload == "w2" else "runs") + ")")
        ax.set_ylabel("µs per step (median, min–max)")
        ax.set_title(f"{workload}: {titles.get(workload, '').split(':')[0]}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(workloads):]:
        ax.set_visible(False)
    fig.suptitle("cordtrio benchmarks: cost per step vs size (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
