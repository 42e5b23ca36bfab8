"""Machine instructions per W1 step on memory: ``python -m benchmarks.instructions``.

    python -m benchmarks.instructions                             # this checkout
    python -m benchmarks.instructions --against ../other-checkout \\
        --against-python ../other-venv/bin/python --out benchmarks/results/instr.json

Wall-clock figures on a shared machine move by ±20 % from one minute to the next; the
instructions a CPU executes for the same work do not. valgrind counts them
(``--tool=cachegrind --cache-sim=no``: every instruction of the process, no cache model)
for two processes of ``benchmarks/instructions_drive.py`` in a checkout, one driving
``--small`` W1 runs after a warm-up and one ``--large``; their difference divided by the
steps between them is what a step costs, without the imports, the start-up and whatever a
drive pays once. Repeated, it agrees to within about half a per cent (the run ids are
random), so a change of a few per cent shows in one measurement, and two versions compare
in instructions as well as in time.

An instruction is not a unit of time: a cache miss or an allocation from the system costs
more than its instructions say, and valgrind runs everything in one thread, so the figure
prices the Python a step runs, not the step's wall time (``python -m benchmarks`` and
``python -m benchmarks.floor`` measure that). Environment: ``PYTHONHASHSEED=0`` for every
process, so that str hashing, and with it every dict's layout, is the same in each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .against import python_path, this_checkout

DRIVE = Path(__file__).with_name("instructions_drive.py")
W1_STEPS = 5  # W1's chain (``benchmarks.workloads.CHAIN_STEPS``)
SUBPROCESS_TIMEOUT = 1800.0
"""Seconds one counted process may take (valgrind runs it some 50 times slower)."""
_TOTAL = re.compile(r"I\s+refs:\s+([\d,]+)")


def valgrind() -> str | None:
    """The valgrind executable, or None when it is not installed."""
    return shutil.which("valgrind")


def count(checkout: str, python: str, runs: int) -> int:
    """Instructions the whole process of ``instructions_drive.py runs`` executes."""
    tool = valgrind()
    if tool is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    try:
        done = subprocess.run(
            [tool, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             python, str(DRIVE), str(runs)],
            cwd=checkout, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
            env={**os.environ, "PYTHONHASHSEED": "0"})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{checkout}: valgrind run gave no answer within "
                           f"{SUBPROCESS_TIMEOUT:.0f} s") from None
    found = _TOTAL.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{checkout}: valgrind run failed (exit {done.returncode}): {tail}")
    return int(found.group(1).replace(",", ""))


def per_step(checkout: str, python: str, small: int, large: int) -> dict[str, Any]:
    """Instructions per W1 step in ``checkout``: the ``large`` drive less the ``small``."""
    low, high = count(checkout, python, small), count(checkout, python, large)
    steps = (large - small) * W1_STEPS
    return {"checkout": checkout, "python": python, "small_runs": small, "large_runs": large,
            "instructions_small": low, "instructions_large": high,
            "instructions_per_step": (high - low) / steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100, help="runs of the small drive")
    parser.add_argument("--large", type=int, default=500, help="runs of the large drive")
    parser.add_argument("--against", default="", help="another checkout, counted the same way")
    parser.add_argument("--against-python", default="",
                        help="the Python that runs --against's harness (default: this one)")
    parser.add_argument("--out", default="", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.small < args.large:
        parser.error("--small must be >= 1 and below --large")
    if args.against_python and not args.against:
        parser.error("--against-python needs --against")
    if valgrind() is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    this = this_checkout(sys.executable)
    versions = {"this": per_step(this.checkout, this.python, args.small, args.large)}
    if args.against:
        versions["against"] = per_step(
            args.against, python_path(args.against_python or sys.executable), args.small,
            args.large)
    for name, figures in versions.items():
        label = f"{name} ({args.against})" if name == "against" else name
        print(f"{label:>24}: {figures['instructions_per_step']:>12,.0f} instructions per "
              f"W1 step on memory")
    result: dict[str, Any] = {"workload": "w1", "backend": "memory", "versions": versions}
    if args.against:
        result["this_over_against"] = (versions["this"]["instructions_per_step"]
                                       / versions["against"]["instructions_per_step"])
        print(f"this / against: {result['this_over_against']:.3f} x the instructions")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"python": platform.python_version(),
                                   "machine": platform.machine(), **result}, indent=2))
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
