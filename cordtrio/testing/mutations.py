"""Does the simulation catch engine bugs? Apply plausible one-line bugs ("mutants") to
``cordtrio/core`` and count the seeds until the simulation fails.

``python -m cordtrio.testing.mutations [--seeds 300] [--only NAME ...] [--faults ...]
[--jobs 2]``

Each mutant is a textual patch (``old`` → ``new``, which must match exactly once) of one
file of ``cordtrio/core``. For each mutant, the whole ``cordtrio`` package is copied into
a temporary directory, the patch is applied to the copy, and a subprocess whose
``sys.path`` starts with that directory runs seeds 0, 1, 2... (``simulate(seed,
faults=...)``, default options otherwise) until one fails or ``--seeds`` pass, once under
each of ``--faults`` (default ``light``, ``heavy`` and ``swarm``). The table gives, per
mutant and preset, the number of seeds up to and including the first failure ("-" when
none failed) and the invariant (for the oracle, its rule) that caught it. Exit status 0
when every mutant was caught under at least one preset, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MUTANTS", "Mutant", "apply_mutant", "first_failure", "main"]


@dataclass(frozen=True)
class Mutant:
    """A plausible engine bug: replace ``old`` by ``new`` in ``cordtrio/<path>``."""

    name: str
    what: str
    path: str
    old: str
    new: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant("fanout_over_max_parallel", "a fan-out runs max_parallel + 1 children",
           "core/fanout.py",
           "limit = step.max_parallel if step.max_parallel > 0 else idx.total",
           "limit = step.max_parallel + 1 if step.max_parallel > 0 else idx.total"),
    Mutant("one_retry_too_many", "a step gets one retry too many", "core/results.py",
           "return retry is not None and retry.max_retries > 0 and attempts <= "
           "retry.max_retries\n",
           "return retry is not None and retry.max_retries > 0 and attempts <= "
           "retry.max_retries + 1\n"),
    Mutant("duplicate_applied_twice", "a duplicate result is applied again",
           "core/results.py",
           "if sr.job_id != result.job_id or sr.status != _RUNNING:",
           "if sr.job_id != result.job_id:"),
    Mutant("siblings_not_cancelled", "a failed fan-out child leaves its siblings running",
           "core/finish.py",
           '        cancel_children(tx, parent_id, parent, reason=f"{why}, siblings '
           'cancelled")\n',
           ""),
    Mutant("retry_timer_lost_on_recovery", "recovery does not re-arm a pending retry",
           "core/commands.py",
           "        tx.effects.append(ArmTimer(sr.next_attempt_at, TimerKind.WAKE, "
           "sr.step_id))\n        return\n",
           "        return\n"),
    Mutant("false_gate_fails", "a false condition gate fails the step", "core/ready.py",
           "    finish(tx, step.id, sr, StepStatus.SUCCEEDED, timeline=\"step_skipped\",",
           "    finish(tx, step.id, sr, StepStatus.FAILED, timeline=\"step_skipped\","),
    Mutant("workflow_timeout_ignored", "the workflow timeout is never armed",
           "core/ready.py",
           "        tx.effects.append(ArmTimer(at, TimerKind.RUN_TIMEOUT))\n",
           "        pass\n"),
    Mutant("stale_result_accepted", "a result of an earlier attempt is accepted",
           "core/results.py",
           "if sr.job_id != result.job_id or sr.status != _RUNNING:",
           "if sr.status != _RUNNING:"),
)

_CHILD = r"""
import json, sys
from cordtrio.testing import SimulationFailure, simulate
faults, seeds, detail = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
for seed in range(seeds):
    try:
        simulate(seed, faults=faults)
    except SimulationFailure as failure:
        rule = failure.detail.split(":", 1)[0] if failure.invariant == "oracle" else ""
        print(json.dumps({"seeds": seed + 1, "invariant": failure.invariant,
                          "rule": rule.removeprefix("rule "),
                          "detail": failure.detail if detail else ""}))
        break
    except Exception as exc:  # an engine that blows up is caught too
        print(json.dumps({"seeds": seed + 1, "invariant": type(exc).__name__,
                          "rule": ""}))
        break
else:
    print(json.dumps({"seeds": None, "invariant": "", "rule": ""}))
"""


def apply_mutant(mutant: Mutant, root: Path) -> None:
    """Patch the copy of ``cordtrio`` under ``root`` (the package directory)."""
    target = root / mutant.path
    text = target.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: the text to replace occurs {count} times "
                         f"in {mutant.path} (expected once): the engine changed")
    target.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def first_failure(mutant: Mutant | None, faults: str, seeds: int, *,
                  detail: bool = False) -> dict[str, object]:
    """Seeds until the first failure with ``mutant`` applied (None: the engine as is):
    ``{"seeds": n or None, "invariant": ..., "rule": ...}`` (and the failure's
    ``detail`` when asked)."""
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="cordtrio-mutant-") as tmp:
        copy = Path(tmp) / "cordtrio"
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
        if mutant is not None:
            apply_mutant(mutant, copy)
        code = f"import sys; sys.path.insert(0, {tmp!r})\n" + _CHILD
        out = subprocess.run([sys.executable, "-c", code, faults, str(seeds),
                              "1" if detail else "0"],
                             capture_output=True, text=True, check=False, cwd=tmp)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"mutant run failed: {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


def _cell(result: dict[str, object]) -> str:
    if result["seeds"] is None:
        return "-"
    how = str(result["rule"] or result["invariant"])
    return f"{result['seeds']} ({how})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cordtrio.testing.mutations",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=300, help="seeds per run (300)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help=f"these mutants only: {', '.join(m.name for m in MUTANTS)}")
    parser.add_argument("--faults", nargs="*", default=["light", "heavy", "swarm"],
                        help="presets to run (light heavy swarm)")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at once (2)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    jobs = [(m, f) for m in chosen for f in args.faults]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: first_failure(job[0], job[1], args.seeds),
                                jobs))
    table = dict(zip(jobs, results, strict=True))
    width = max(len(m.name) for m in chosen)
    print(f"{'mutant':<{width}}  " + "  ".join(f"{f:<26}" for f in args.faults))
    missed = []
    for m in chosen:
        cells = [_cell(table[(m, f)]) for f in args.faults]
        print(f"{m.name:<{width}}  " + "  ".join(f"{c:<26}" for c in cells))
        if all(table[(m, f)]["seeds"] is None for f in args.faults):
            missed.append(m.name)
    print(f"seeds to first failure (of {args.seeds}); '-' = not caught")
    if missed:
        print(f"NOT caught: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
