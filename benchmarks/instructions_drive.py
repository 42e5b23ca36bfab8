"""What ``benchmarks.instructions`` runs under valgrind in a checkout: W1 on memory.

    valgrind --tool=cachegrind --cache-sim=no python benchmarks/instructions_drive.py RUNS

Run by its path with a checkout's root as the working directory and that checkout's
interpreter: one small sample first (the imports, the first engine's start and whatever a
first run pays once), then one sample of ``RUNS`` runs, through the checkout's own harness
(``WORKLOADS["w1"]``, ``run_sample``, which every version of the harness has). Two such
processes of different ``RUNS`` differ only by the steps between them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WARM_UP_RUNS = 20


def main(argv: list[str]) -> int:
    # run by its path, this file's directory leads ``sys.path``: its neighbours (``profile``
    # among them) must not shadow the standard library's modules
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, os.getcwd())  # the checkout's own harness and cordtrio
    import trio

    from benchmarks.measure import run_sample  # type: ignore[import-not-found, unused-ignore]
    from benchmarks.workloads import WORKLOADS  # type: ignore[import-not-found, unused-ignore]

    runs = int(argv[0])
    trio.run(run_sample, WORKLOADS["w1"], "memory", WARM_UP_RUNS)
    sample = trio.run(run_sample, WORKLOADS["w1"], "memory", runs)
    print(sample.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
