"""``cordtrio simulate``: many seeded simulations of the engine under faults.

Without ``--workflow`` each seed runs random valid workflows (``cordtrio.testing.simulate``);
with ``--workflow FILE [--handlers module] [--input JSON]`` each seed runs *your* workflow
and handlers (``run_under_faults``). Seeds ``S .. S+N-1`` run in order with a progress bar;
the first violated invariant (or unexpected error) stops the batch and prints the seed, a
trace excerpt and the exact command that replays that one seed. Exit status: 0 every seed
green, 1 a seed failed, 2 a usage or definition problem.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..model import Workflow
from ..testing import (
    FAULT_PRESETS,
    LEASE_STORES,
    STORES,
    Budget,
    SimulationFailure,
    SimulationReport,
    SimulationTotals,
    run_under_faults,
    simulate,
)
from ..testing.mix import FAULT_SWITCHES
from ..testing.oracle import MULTI_ENGINE_SITUATIONS, SITUATIONS
from ..testing.shrink import Shrunk, shrink
from ..worker import Handler
from .loading import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    CliError,
    check_input,
    load_handlers,
    parse_input,
    read_workflow,
)

__all__ = ["add_simulate_parser", "simulate_command"]

PROG = "cordtrio"
DEFAULT_SEEDS = 100
DEFAULT_TRACE_LINES = 30


def add_simulate_parser(commands: Any) -> None:
    """Register ``simulate`` on the ``cordtrio`` subparsers."""
    sim = commands.add_parser(
        "simulate", help="run seeded simulations of the engine under faults",
        description="Run N seeded, deterministic simulations: the real engine with faulty "
                    "bus, store and workers, engine crashes and recovery, in virtual time, "
                    "with invariants checked on every event. A failing seed replays "
                    "exactly with the command printed.",
        epilog="Exit status: 0 all seeds green, 1 a seed violated an invariant, 2 usage.")
    sim.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                     help=f"how many seeds to run (default {DEFAULT_SEEDS})")
    sim.add_argument("--start", type=int, default=0, metavar="S",
                     help="first seed (default 0): seeds S .. S+N-1 run")
    sim.add_argument("--faults", choices=FAULT_PRESETS, default="swarm",
                     help="fault preset for bus, store and workers, or swarm: a mix drawn "
                          "per seed (default swarm)")
    sim.add_argument("--no-fault", action="append", default=[], metavar="KIND",
                     choices=FAULT_SWITCHES,
                     help=f"turn this fault kind off (repeatable): "
                          f"{', '.join(FAULT_SWITCHES)}")
    sim.add_argument("--runs", type=int, metavar="R",
                     help="runs submitted per seed (default 6; 4 with --workflow)")
    sim.add_argument("--crashes", type=int, metavar="K",
                     help="engine crashes (and recoveries) per seed (default: one to three, "
                          "drawn per seed; 0 = none)")
    sim.add_argument("--store", choices=STORES, default="memory",
                     help="memory, or the Redis store over fakeredis (default memory)")
    sim.add_argument("--engines", type=int, default=1, metavar="E",
                     help="engines sharing the store, each crashing on its own (default 1; "
                          "more than 1 needs --store memory)")
    sim.add_argument("--bound", type=float, metavar="SECONDS",
                     help="virtual seconds every run has to finish after faults stop "
                          "(default 7 days)")
    sim.add_argument("--workflow", metavar="WORKFLOW_FILE",
                     help="simulate this workflow instead of random ones")
    sim.add_argument("--handlers", metavar="module[:attr]",
                     help="with --workflow: HANDLERS (topic -> async handler) called when a "
                          "simulated job succeeds; topics without one return a stub")
    sim.add_argument("--input", metavar="JSON|@file",
                     help="with --workflow: the run input (JSON object, @file, @-)")
    sim.add_argument("--trace-lines", type=int, default=DEFAULT_TRACE_LINES, metavar="N",
                     help=f"trace lines shown for a failing seed (default "
                          f"{DEFAULT_TRACE_LINES})")
    sim.add_argument("--trace-out", metavar="FILE",
                     help="write the whole trace of a failing seed to FILE")
    sim.add_argument("--max-cpu", type=float, metavar="SECONDS",
                     help=f"CPU seconds one seed may use before it fails (invariant budget; "
                          f"default {Budget.cpu:g})")
    sim.add_argument("--max-steps", type=int, metavar="N",
                     help=f"Trio task steps one seed may take before it fails (invariant "
                          f"budget; default {Budget.steps})")
    sim.add_argument("--no-operator", action="store_true",
                     help="no cancels, reruns or Client calls (under faults they are on)")
    sim.add_argument("--keep-workflow", action="append", default=[], metavar="ID",
                     help="run only this one of the seed's workflows (repeatable)")
    sim.add_argument("--drop-step", action="append", default=[], metavar="WORKFLOW/STEP",
                     help="run the seed's workflows without this step (repeatable)")
    sim.add_argument("--no-shrink", action="store_true",
                     help="do not shrink a failing seed to a minimal reproduction")
    sim.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sim.set_defaults(handler=simulate_command)


@dataclass
class _Batch:
    """What one seed runs (``runner(seed, **options)``), and the arguments that
    reproduce it; ``workflows``: the user's workflow (None: the seed's random ones)."""

    runner: Callable[..., SimulationReport]
    options: dict[str, Any]
    repro: list[str]
    workflows: list[Workflow] | None = None

    def run(self, seed: int) -> SimulationReport:
        return self.runner(seed, **self.options)


def _batch(args: argparse.Namespace) -> _Batch:
    if args.seeds < 1:
        raise CliError("--seeds must be at least 1")
    if args.runs is not None and args.runs < 1:
        raise CliError("--runs must be at least 1")
    if args.crashes is not None and args.crashes < 0:
        raise CliError("--crashes must not be negative")
    if args.engines < 1:
        raise CliError("--engines must be at least 1")
    if args.engines > 1 and args.store not in LEASE_STORES:
        raise CliError(f"--engines {args.engines} needs --store memory (the simulation uses "
                       f"run leases only there)")
    if args.trace_lines < 0:
        raise CliError("--trace-lines must not be negative")
    if args.bound is not None and args.bound <= 0:
        raise CliError("--bound must be positive")
    if args.max_cpu is not None and args.max_cpu <= 0:
        raise CliError("--max-cpu must be positive")
    if args.max_steps is not None and args.max_steps < 1:
        raise CliError("--max-steps must be at least 1")
    if args.workflow is None and (args.handlers or args.input):
        raise CliError("--handlers and --input need --workflow")
    options: dict[str, Any] = {"faults": args.faults,
                               "crash": True if args.crashes is None else args.crashes,
                               "store": args.store, "engines": args.engines}
    if args.no_fault:
        options["disabled"] = tuple(args.no_fault)
    if args.no_operator:
        options["operator"] = False
    if args.keep_workflow:
        options["keep_workflows"] = tuple(args.keep_workflow)
    if args.drop_step:
        options["drop_steps"] = tuple(args.drop_step)
    if args.bound is not None:
        options["bound"] = args.bound
    if args.max_cpu is not None or args.max_steps is not None:
        options["budget"] = Budget(cpu=args.max_cpu or Budget.cpu,
                                   steps=args.max_steps or Budget.steps)
    if args.workflow is None:
        options["runs"] = args.runs or 6
        return _Batch(simulate, options, _repro(args))
    workflow = read_workflow(args.workflow)
    payload = parse_input(args.input)
    check_input(workflow, payload)
    handlers: dict[str, Handler] = load_handlers(args.handlers) if args.handlers else {}
    options["runs"] = args.runs or 4

    def runner(seed: int, **options: Any) -> SimulationReport:
        return run_under_faults(workflow, handlers, seed=seed, inputs=payload, **options)

    return _Batch(runner, options, _repro(args, payload), [workflow])


def _repro(args: argparse.Namespace, payload: Any = None) -> list[str]:
    """The options of ``args`` that a replay of one of its seeds needs."""
    repro = ["--faults", args.faults]
    for kind in args.no_fault:
        repro += ["--no-fault", kind]
    if args.runs is not None:
        repro += ["--runs", str(args.runs)]
    if args.crashes is not None:
        repro += ["--crashes", str(args.crashes)]
    if args.store != "memory":
        repro += ["--store", args.store]
    if args.engines != 1:
        repro += ["--engines", str(args.engines)]
    if args.no_operator:
        repro.append("--no-operator")
    for wf in args.keep_workflow:
        repro += ["--keep-workflow", wf]
    for ref in args.drop_step:
        repro += ["--drop-step", ref]
    if args.bound is not None:
        repro += ["--bound", f"{args.bound:g}"]
    if args.max_cpu is not None or args.max_steps is not None:
        repro += ["--max-cpu", f"{args.max_cpu or Budget.cpu:g}",
                  "--max-steps", str(args.max_steps or Budget.steps)]
    if args.workflow is not None:
        repro += ["--workflow", args.workflow]
        if args.handlers:
            repro += ["--handlers", args.handlers]
        if args.input:
            # replay with the input itself: a file or stdin may have changed by then
            repro += ["--input", json.dumps(payload, separators=(",", ":"), sort_keys=True)]
    return repro


def _shrunk_args(args: argparse.Namespace, shrunk: Shrunk) -> argparse.Namespace:
    """``args`` with what the shrinking changed (the options of ``Shrunk.flags``)."""
    o = shrunk.options
    return argparse.Namespace(**{
        **vars(args), "runs": o["runs"], "crashes": o["crash"], "engines": o["engines"],
        "no_fault": list(o["disabled"]), "no_operator": not o["operator"],
        "keep_workflow": list(o["keep_workflows"]), "drop_step": list(o["drop_steps"])})


def simulate_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """``cordtrio simulate``: run the seeds, print the summary; 0 all green, 1 a failure."""
    batch = _batch(args)
    if console is None:
        console = Console(file=sys.stdout)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(file=sys.stdout, width=120)  # tables stay readable in logs
    totals = SimulationTotals()
    failure: SimulationFailure | None = None
    crashed: tuple[int, BaseException] | None = None
    seeds = range(args.start, args.start + args.seeds)
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]simulate[/] seed {task.fields[seed]}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[rate]} scenarios/s"),
        TimeElapsedColumn(), console=console, transient=True,
        disable=args.quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task("seeds", total=len(seeds), seed=args.start, rate="-")
        for seed in seeds:
            progress.update(task, seed=seed)
            try:
                totals.add(batch.run(seed))
            except SimulationFailure as exc:
                failure = exc
                break
            except Exception as exc:  # an engine bug may surface as an error, not a check
                crashed = (seed, exc)
                break
            elapsed = time.perf_counter() - started
            progress.update(task, advance=1, rate=f"{totals.scenarios / elapsed:.1f}")
    wall = time.perf_counter() - started
    failed = (f"seed {failure.seed} ({failure.invariant})" if failure is not None else
              f"seed {crashed[0]} ({type(crashed[1]).__name__})" if crashed is not None else "")
    _print_summary(console, totals, wall, failed)
    if failure is not None:
        _print_failure(console, args, batch, failure)
        if not args.no_shrink:
            _print_shrunk(console, args, batch, failure)
        return EXIT_RUN_FAILED
    if crashed is not None:
        seed, error = crashed
        console.print(f"[bold red]seed {seed} raised[/] "
                      f"{escape(f'{type(error).__name__}: {error}')}", highlight=False)
        console.print(f"reproduce: {_command(batch, seed)}", markup=False, highlight=False,
                      soft_wrap=True)
        return EXIT_RUN_FAILED
    console.print(f"[bold green]ok[/]: {totals.scenarios} scenarios, every invariant held",
                  highlight=False)
    return EXIT_OK


def _command(batch: _Batch, seed: int) -> str:
    return _replay(batch.repro, seed)


def _replay(repro: list[str], seed: int) -> str:
    return shlex.join([PROG, "simulate", "--seeds", "1", "--start", str(seed), *repro])


def _print_summary(console: Console, totals: SimulationTotals, wall: float,
                   failed: str) -> None:
    table = Table(title="simulation summary", box=box.SIMPLE_HEAD, show_header=True)
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(totals.statuses.items()))
    table.add_row("scenarios", f"{totals.scenarios} passed" + (", 1 failed" if failed else ""))
    if failed:
        table.add_row("failed", failed, style="red")
    table.add_row("runs", f"{totals.runs}" + (f" ({statuses})" if statuses else ""))
    table.add_row("steps dispatched", str(totals.steps_dispatched))
    if totals.faults:
        for kind, count in sorted(totals.faults.items()):
            table.add_row(f"faults: {kind}", str(count))
    else:
        table.add_row("faults injected", "0")
    table.add_row("engine restarts", str(totals.engine_restarts))
    for name in (*SITUATIONS, *MULTI_ENGINE_SITUATIONS):
        table.add_row(f"seen: {name}", str(totals.situations.get(name, 0)))
    table.add_row("virtual time", _duration(totals.virtual_time))
    table.add_row("real time", f"{wall:.2f}s")
    rate = totals.scenarios / wall if wall > 0 else 0.0
    table.add_row("scenarios/s", f"{rate:.1f}")
    console.print(table)


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d ({seconds:.0f}s)"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h ({seconds:.0f}s)"
    return f"{seconds:.1f}s"


def _print_trace_tail(console: Console, args: argparse.Namespace,
                      failure: SimulationFailure) -> None:
    """The last ``--trace-lines`` lines of a failure's trace."""
    lines = failure.trace[-args.trace_lines:] if args.trace_lines else []
    if lines:
        console.print(f"last {len(lines)} of {len(failure.trace)} trace lines:",
                      highlight=False)
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _print_failure(console: Console, args: argparse.Namespace, batch: _Batch,
                   failure: SimulationFailure) -> None:
    console.print(f"[bold red]FAILED[/] seed {failure.seed}: invariant "
                  f"[bold]{failure.invariant}[/] violated", highlight=False)
    console.print(f"  {failure.detail}", markup=False, highlight=False, soft_wrap=True)
    _print_trace_tail(console, args, failure)
    if args.trace_out:
        try:
            Path(args.trace_out).write_text("".join(f"{line}\n" for line in failure.trace),
                                            encoding="utf-8")
        except OSError as exc:
            console.print(f"cannot write --trace-out {args.trace_out!r}: "
                          f"{exc.strerror or exc}", markup=False, highlight=False)
        else:
            console.print(f"whole trace written to {args.trace_out}", markup=False,
                          highlight=False)
    console.print(f"reproduce: {_command(batch, failure.seed)}", markup=False,
                  highlight=False, soft_wrap=True)


def _print_shrunk(console: Console, args: argparse.Namespace, batch: _Batch,
                  failure: SimulationFailure) -> None:
    """Shrink the failing seed and print the minimal reproduction and its command."""
    console.print(f"shrinking seed {failure.seed} (--no-shrink to skip)...", highlight=False)
    shrunk = shrink(failure, batch.options, run=batch.runner, workflows=batch.workflows)
    small = shrunk.failure
    console.print(f"shrunk in {shrunk.tries} replays: "
                  f"{'; '.join(shrunk.changes) or 'nothing could be removed'}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"  {small.detail}", markup=False, highlight=False, soft_wrap=True)
    _print_trace_tail(console, args, small)
    repro = _repro(_shrunk_args(args, shrunk), _payload(batch))
    console.print(f"minimal: {_replay(repro, failure.seed)}", markup=False,
                  highlight=False, soft_wrap=True)


def _payload(batch: _Batch) -> Any:
    """The run input of a ``--workflow`` batch, as its replay command gives it."""
    if "--input" in batch.repro:
        return json.loads(batch.repro[batch.repro.index("--input") + 1])
    return None
