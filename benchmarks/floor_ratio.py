"""A version's ratio to the floor, measured inside that version's own process.

    python benchmarks/floor_ratio.py --rounds 7 --size 1000      # run in a checkout's root

Run by its path with a checkout's root as the working directory and that checkout's
interpreter, it loads the floor program (``floor_program.py``, beside this file) by its
path and that checkout's own harness (``benchmarks.workloads``, ``benchmarks.measure``),
then alternates, for ``--rounds`` rounds, one drive of the floor and one sample of the
checkout's in-memory W1 (the order swapped every round, ``--first`` first), and prints
their medians and the median of the per-round ratios as
one JSON object. Nothing else runs between the two samples of a round, so the ratio of a
version to the floor holds on any machine: two versions' ratios, each measured this way
(``python -m benchmarks.floor --ratios``), compare them with each other and with a ratio
measured elsewhere against the same floor program.

It uses only what every checkout's harness has had since the floor existed, and before:
``WORKLOADS["w1"]`` and ``run_sample(workload, "memory", size)`` returning a sample with
``steps_per_s``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

FLOOR_PROGRAM = Path(__file__).with_name("floor_program.py")
W1_STEPS = 5  # W1's chain (``benchmarks.workloads.CHAIN_STEPS``, the same in every version)


def load_floor_program() -> Any:
    """``floor_program.py`` as a module of its own (not part of any checkout's package)."""
    spec = importlib.util.spec_from_file_location("cordtrio_floor_program", FLOOR_PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up)
    spec.loader.exec_module(module)
    return module


def measure(rounds: int, size: int, first: str = "floor") -> dict[str, Any]:
    """Alternate the floor and this checkout's in-memory W1 for ``rounds`` rounds, ``first``
    ("floor" or "cordtrio") first in the first round, the other first in the next."""
    import trio

    sys.path.insert(0, os.getcwd())  # the checkout's own harness and cordtrio
    from benchmarks.measure import run_sample  # type: ignore[import-not-found, unused-ignore]
    from benchmarks.workloads import WORKLOADS  # type: ignore[import-not-found, unused-ignore]

    program = load_floor_program()
    floor: list[float] = []
    cordtrio: list[float] = []
    def drive_floor() -> None:
        floor.append(trio.run(functools.partial(
            program.drive_floor, size, W1_STEPS))["steps_per_s"])

    def drive_cordtrio() -> None:
        gc.collect()  # what came before, cleared as before a harness sample
        cordtrio.append(trio.run(run_sample, WORKLOADS["w1"], "memory", size).steps_per_s)

    order = [drive_floor, drive_cordtrio]
    if first == "cordtrio":
        order.reverse()
    for r in range(rounds):
        for drive in order[::-1] if r % 2 else order:
            drive()
    return {"size": size, "rounds": rounds, "floor_steps_per_s": floor,
            "cordtrio_steps_per_s": cordtrio,
            "floor_median": statistics.median(floor),
            "cordtrio_median": statistics.median(cordtrio),
            "median_of_round_ratios": statistics.median(
                c / f for f, c in zip(floor, cordtrio, strict=True))}


def main(argv: list[str] | None = None) -> int:
    # run by its path, this file's directory leads ``sys.path``: its neighbours (``profile``
    # among them) must not shadow the standard library's modules
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--first", choices=("floor", "cordtrio"), default="floor",
                        help="which drive comes first in the first round (then they swap)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.size < 1:
        parser.error("--rounds and --size must be >= 1")
    print(json.dumps(measure(args.rounds, args.size, args.first)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
