"""The floor under W1: ``python -m benchmarks.floor``.

    python -m benchmarks.floor                          # the floor alone, one drive
    python -m benchmarks.floor --compare --rounds 7     # floor vs cordtrio, interleaved
    python -m benchmarks.floor --compare --rounds 7 --against ../other-checkout \\
        --against-python ../other-venv/bin/python --out benchmarks/results/floor.json
    python -m benchmarks.floor --ratios --rounds 7 --against ../other-checkout \\
        --against-python ../other-venv/bin/python   # each version's ratio, in its process

The floor is the leanest standalone Trio program of W1's shape: N runs x 5 dependent no-op
jobs, one task per run, a worker pool over a memory channel, a dict as the store. A worker
puts a job's result straight into its run's mailbox and wakes the parked run task with
``trio.lowlevel.reschedule``; nothing yields unless it must wait. No engine, no core, no
payload store, no retries: what cordtrio costs above this is the price of what it does
(durable state, the pure core, payloads, acknowledgements, cancellation, hooks).

``--compare`` measures, in one process and interleaved for ``--rounds`` rounds, the floor,
the floor with its pool started as jobs need it (``floor, pool grown``: as cordtrio's worker
starts its slots, so that a burst of no-op jobs is run by a few workers without a task
switch per job), the floor doing every W1 step's SPEC duties with plain objects
(``floor+duties``,
``benchmarks.floor_duties``: what the duties cost written the leanest way), the floor
carrying cordtrio's own core, memory store and payload store (``floor+core``,
``benchmarks.floor_core``: what the parts cost without the shell around them) and
cordtrio's in-memory W1 through the same harness code as ``python -m benchmarks``
(``measure.run_sample``: a fresh engine and worker per sample), and prints the median
steps/s of each and their ratios to the floor. ``--against DIR`` adds, in the same rounds,
W1 measured by another checkout's own harness (``python -m benchmarks`` run in ``DIR`` with
``--against-python``, one sample per round), so that two versions and the floor are
compared in one sitting (that process between the drives of each round slows the floor:
the ratios of one such run are not those of a run without it). ``--ratios`` measures, with
``--against``, each version's ratio to the floor inside that version's own process
(``benchmarks/floor_ratio.py``: the floor program, ``benchmarks/floor_program.py``, loaded
by its path beside the version's own W1, alternated there), the two processes alternated
round by round: a version's ratio to the floor holds on any machine, so it compares with a
ratio measured elsewhere against the same program. ``--out`` writes every sample and the
medians as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import floor_program as program
from .against import Against, python_path, this_checkout
from .measure import run_sample
from .switches import TaskSteps
from .workloads import CHAIN_STEPS, WORKLOADS


async def drive_floor(runs: int, steps: int = CHAIN_STEPS, *, grown: bool = False,
                      count_switches: bool = True) -> dict[str, float | None]:
    """``floor_program.drive_floor``, with the task switches per step counted (None
    without ``count_switches``: the counting instrument runs on every task step and slows
    the floor by about a tenth, so timed comparisons leave it out, as cordtrio's samples
    do)."""
    switches = TaskSteps() if count_switches else None
    result: dict[str, float | None] = {
        **await program.drive_floor(runs, steps, grown=grown, instrument=switches)}
    result["task_switches_per_step"] = (switches.steps / (runs * steps) if switches
                                        else None)
    return result


def cordtrio_w1(size: int) -> float:
    """cordtrio's in-memory W1 at ``size`` runs, one sample through the harness: steps/s.
    The collector first clears what earlier samples of this process left (as a fresh
    process of ``python -m benchmarks`` starts clean)."""
    gc.collect()
    sample = trio.run(run_sample, WORKLOADS["w1"], "memory", size)
    return sample.steps_per_s


def other_checkout_w1(checkout: str, python: str, size: int) -> float:
    """W1 on memory measured by another checkout's own harness (one sample): steps/s."""
    with tempfile.TemporaryDirectory(prefix="cordtrio-floor-") as tmp:
        out = Path(tmp) / "w1.json"
        subprocess.run(
            [python, "-m", "benchmarks", "--workload", "w1", "--backend", "memory",
             "--size", f"w1={size}", "--repeat", "1", "--out", str(out)],
            cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["results"][0]["steps_per_s_median"])


def compare(rounds: int, size: int, against: str = "", against_python: str = "",
            report: Any = print) -> dict[str, Any]:
    """Interleave the floor, cordtrio (and another checkout) for ``rounds`` rounds; return
    every sample, the medians and the ratios to the floor."""
    from .floor_core import drive_floor_core  # imports cordtrio's parts: not for the floor
    from .floor_duties import drive_floor_duties

    samples: dict[str, list[float]] = {"floor": [], "floor, pool grown": [],
                                       "floor+duties": [], "floor+duties, design": [],
                                       "floor+core": [], "cordtrio": []}
    if against:
        samples["against"] = []
    # Every drive timed without a Trio instrument, as cordtrio's samples are
    timed_floor = partial(drive_floor, size, count_switches=False)
    for r in range(rounds):
        samples["floor"].append(trio.run(timed_floor)["steps_per_s"])
        samples["floor, pool grown"].append(
            trio.run(partial(timed_floor, grown=True))["steps_per_s"])
        samples["floor+duties"].append(trio.run(drive_floor_duties, size)["steps_per_s"])
        samples["floor+duties, design"].append(
            trio.run(partial(drive_floor_duties, size, design=True))["steps_per_s"])
        gc.collect()
        samples["floor+core"].append(
            trio.run(partial(drive_floor_core, size, count_switches=False))["steps_per_s"])
        samples["cordtrio"].append(cordtrio_w1(size))
        if against:
            samples["against"].append(
                other_checkout_w1(against, against_python or sys.executable, size))
        report(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:,.0f}" for name, values in samples.items()) + " steps/s")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians["floor"]
    # On a shared machine the load drifts between rounds: a ratio within each round (its
    # samples close in time), then their median, is steadier than a ratio of medians.
    pairs = {"cordtrio/floor": ("cordtrio", "floor"),
             "cordtrio/floor, pool grown": ("cordtrio", "floor, pool grown"),
             "floor+duties/floor": ("floor+duties", "floor"),
             "floor+core/floor": ("floor+core", "floor"),
             "cordtrio/floor+duties": ("cordtrio", "floor+duties"),
             "floor+duties, design/floor": ("floor+duties, design", "floor"),
             "cordtrio/floor+duties, design": ("cordtrio", "floor+duties, design"),
             "cordtrio/floor+core": ("cordtrio", "floor+core")}
    if against:
        pairs["cordtrio/against"] = ("cordtrio", "against")
    return {"workload": "w1", "backend": "memory", "size": size, "rounds": rounds,
            "against": against, "samples_steps_per_s": samples,
            "median_steps_per_s": medians,
            "ratio_to_floor": {name: m / floor for name, m in medians.items()},
            "ratio_cordtrio_to_against": (medians["cordtrio"] / medians["against"]
                                          if against else None),
            "median_of_round_ratios": {
                label: statistics.median(x / y for x, y in zip(samples[a], samples[b],
                                                                strict=True))
                for label, (a, b) in pairs.items()}}


SUBPROCESS_TIMEOUT = 900.0
"""Seconds a version's process of ``--ratios`` may take before it is called hung."""


def own_process_ratio(checkout: str, python: str, size: int, first: str = "floor"
                      ) -> dict[str, Any]:
    """One round of ``floor_ratio.py`` run in ``checkout`` by ``python``: the floor and
    that checkout's in-memory W1 (``first`` first), alternated in that one process."""
    try:
        done = subprocess.run(
            [python, str(Path(__file__).with_name("floor_ratio.py")), "--rounds", "1",
             "--size", str(size), "--first", first],
            cwd=checkout, capture_output=True, text=True, check=False,
            timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{checkout}: no answer within {SUBPROCESS_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:]) or "no output"
        raise RuntimeError(f"{checkout}: exit {done.returncode}: {tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ratios(rounds: int, size: int, against: str, against_python: str = "",
           report: Any = print) -> dict[str, Any]:
    """cordtrio's ratio to the floor, of this checkout and of ``against``, each measured in
    its own process (``floor_ratio.py``: the floor and that version's W1 alternated there,
    nothing else between them), the two processes alternated for ``rounds`` rounds. A
    version's ratio to the floor holds on any machine, so it compares with one measured
    elsewhere against the same floor program."""
    versions = {"this": this_checkout(sys.executable),
                "against": Against(against, python_path(against_python or sys.executable))}
    rounds_of: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    names = list(versions)
    for r in range(rounds):
        # the versions' order, and which of the floor and W1 comes first, swap every round
        first = "cordtrio" if r % 2 else "floor"
        for name in names[::-1] if r % 2 else names:
            version = versions[name]
            rounds_of[name].append(
                own_process_ratio(version.checkout, version.python, size, first))
        report(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name}: floor {done[-1]['floor_median']:,.0f}, cordtrio "
            f"{done[-1]['cordtrio_median']:,.0f} ({done[-1]['median_of_round_ratios']:.3f})"
            for name, done in rounds_of.items()))
    result: dict[str, Any] = {"workload": "w1", "backend": "memory", "size": size,
                              "rounds": rounds, "against": against, "versions": {}}
    for name, done in rounds_of.items():
        result["versions"][name] = {
            "floor_steps_per_s": [d["floor_median"] for d in done],
            "cordtrio_steps_per_s": [d["cordtrio_median"] for d in done],
            "ratio_to_floor": statistics.median(d["median_of_round_ratios"] for d in done)}
    versions_done = result["versions"]
    result["this_over_against"] = (versions_done["this"]["ratio_to_floor"]
                                   / versions_done["against"]["ratio_to_floor"])
    return result


PARTS = {  # name: drive_floor_core's options (what of cordtrio the floor carries)
    "floor+core": {"store": False, "payloads": False},
    "floor+core+store": {"store": True, "payloads": False},
    "floor+core+payloads": {"store": False, "payloads": True},
    "floor+core+store+payloads": {"store": True, "payloads": True},
}


def parts(rounds: int, size: int, report: Any = print) -> dict[str, Any]:
    """Interleave, for ``rounds`` rounds, the floor, the floor carrying cordtrio's core
    alone, with its memory store, with its payload store, with both, and cordtrio; return
    every sample, the median µs per step (wall) of each, and what each part adds."""
    from .floor_core import drive_floor_core

    names = ["floor", *PARTS, "cordtrio"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        samples["floor"].append(
            trio.run(partial(drive_floor, size, count_switches=False))["steps_per_s"])
        for name, options in PARTS.items():
            gc.collect()
            samples[name].append(trio.run(partial(
                drive_floor_core, size, **options, count_switches=False))["steps_per_s"])
        samples["cordtrio"].append(cordtrio_w1(size))
        report(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:,.0f}" for name, values in samples.items()) + " steps/s")
    us = {name: 1e6 / statistics.median(values) for name, values in samples.items()}
    added = {
        "core (decide and the run's objects)": us["floor+core"] - us["floor"],
        "memory store": us["floor+core+store"] - us["floor+core"],
        "payload store": us["floor+core+payloads"] - us["floor+core"],
        "store and payloads together": us["floor+core+store+payloads"] - us["floor+core"],
        "the engine's shell (bus, worker, envelopes, API)":
            us["cordtrio"] - us["floor+core+store+payloads"],
    }
    return {"workload": "w1", "backend": "memory", "size": size, "rounds": rounds,
            "samples_steps_per_s": samples,
            "median_steps_per_s": {n: statistics.median(v) for n, v in samples.items()},
            "median_us_per_step": us, "us_per_step_added": added}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=WORKLOADS["w1"].default_sizes[0],
                        help="runs per drive (default: W1's memory size)")
    parser.add_argument("--compare", action="store_true",
                        help="interleave the floor and cordtrio's in-memory W1")
    parser.add_argument("--parts", action="store_true",
                        help="what cordtrio's core, store, payloads and shell each add to "
                             "the floor (interleaved rounds)")
    parser.add_argument("--ratios", action="store_true",
                        help="cordtrio's ratio to the floor of this checkout and of "
                             "--against, each measured in its own process")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of --compare, --parts or --ratios (5)")
    parser.add_argument("--against", default="",
                        help="another checkout whose harness measures W1 in the same rounds")
    parser.add_argument("--against-python", default="",
                        help="the Python that runs --against's harness (default: this one)")
    parser.add_argument("--out", default="", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.size < 1 or args.rounds < 1:
        parser.error("--size and --rounds must be >= 1")
    if args.against and not (args.compare or args.ratios):
        parser.error("--against needs --compare or --ratios")
    if args.ratios and not args.against:
        parser.error("--ratios needs --against")
    if args.parts + args.compare + args.ratios > 1:
        parser.error("--parts, --compare and --ratios are separate measurements")
    if args.ratios:
        result = ratios(args.rounds, args.size, args.against, args.against_python)
        for name, version in result["versions"].items():
            label = f"{name} ({args.against})" if name == "against" else name
            print(f"{label:>24}: cordtrio {version['ratio_to_floor']:.3f} x floor "
                  "(median of the per-round ratios)")
        print(f"this / against: {result['this_over_against']:.2f} x")
    elif args.parts:
        result = parts(args.rounds, args.size)
        for name, us in result["median_us_per_step"].items():
            print(f"{name:>26}: median {result['median_steps_per_s'][name]:>9,.0f} steps/s  "
                  f"{us:6.1f} µs per step")
        for part, us in result["us_per_step_added"].items():
            print(f"  + {us:6.1f} µs  {part}")
    elif args.compare:
        result = compare(args.rounds, args.size, args.against, args.against_python)
        med, ratio = result["median_steps_per_s"], result["ratio_to_floor"]
        for name in med:
            label = f"{name} ({args.against})" if name == "against" else name
            print(f"{label:>24}: median {med[name]:>9,.0f} steps/s  "
                  f"{ratio[name]:.2f} x floor")
        if args.against:
            print(f"cordtrio / against: {result['ratio_cordtrio_to_against']:.2f} x")
        print("median of the per-round ratios: " + ", ".join(
            f"{label} {value:.2f} x" for label, value in result["median_of_round_ratios"].items()))
    else:
        # timed without the switch-counting instrument, then counted in a drive of its own
        result = {"workload": "w1-floor", "size": args.size,
                  **trio.run(partial(drive_floor, args.size, count_switches=False))}
        counted = trio.run(drive_floor, args.size)
        result["task_switches_per_step"] = counted["task_switches_per_step"]
        print(f"floor, {args.size} runs x {CHAIN_STEPS} steps: {result['steps_per_s']:,.0f} "
              f"steps/s, {result['cpu_us_per_step']:.0f} µs CPU per step, "
              f"{result['task_switches_per_step']:.2f} task switches per step")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"python": platform.python_version(),
                                   "machine": platform.machine(), "cpus": os.cpu_count(),
                                   **result}, indent=2))
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
