"""The ``cordtrio`` command line (also ``python -m cordtrio``).

``cordtrio run WORKFLOW_FILE`` runs a workflow on the embedded in-memory backends with
in-process workers, live progress and a final summary; ``validate`` checks a definition;
``graph`` prints its DAG. Exit status: 0 success, 1 the run failed / timed out / was
cancelled, 2 a usage, definition, input or handlers problem, 3 the run waits for an
approval, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

import trio
from rich.console import Console

from ..model import RunStatus
from .display import make_view
from .graph import to_dot, to_mermaid
from .loading import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    EXIT_WAITING,
    CliError,
    check_handlers,
    check_input,
    load_handlers,
    parse_input,
    read_workflow,
)
from .logs import configure_logging
from .output import json_text
from .report import outcome_text, print_report, step_errors
from .run import RunOptions, execute
from .simulate import add_simulate_parser

__all__ = ["main"]

PROG = "cordtrio"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run, validate and draw cordtrio workflows.",
        epilog="Exit status: 0 succeeded, 1 run failed/timed out/cancelled, "
               "2 usage or definition error, 3 run waiting for approval.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a workflow in-process with live progress",
        description="Run a workflow to completion on the in-memory backends, with the "
                    "handlers as in-process workers.")
    run.add_argument("workflow", metavar="WORKFLOW_FILE", help=".yaml, .yml or .json")
    run.add_argument("--input", metavar="JSON|@file",
                     help="run input: a JSON object, @file.json, or @- for stdin")
    run.add_argument("--handlers", metavar="module[:attr]",
                     help="module (importable from the current directory or PYTHONPATH, "
                          "or a path/to/file.py) whose HANDLERS (or attr) maps "
                          "topic -> async handler")
    run.add_argument("--approve-all", action="store_true",
                     help="approve every approval step as soon as it waits")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="end the run timed_out if it is not finished after SECONDS (a "
                          "run timeout, like the workflow's timeout_sec)")
    run.add_argument("--max-concurrency", type=int, default=64, metavar="N",
                     help="jobs the in-process worker runs at once (default 64)")
    run.add_argument("--quiet", "-q", action="store_true",
                     help="print only the one-line outcome (and the steps' errors on stderr)")
    run.add_argument("--json", action="store_true",
                     help="print the final run as JSON, with its timeline, instead of the "
                          "summary")

    validate = commands.add_parser("validate", help="check a workflow definition")
    validate.add_argument("workflow", metavar="WORKFLOW_FILE")
    validate.add_argument("--handlers", metavar="module[:attr]",
                          help="also check that every job topic has a handler")

    graph = commands.add_parser("graph", help="print the workflow's DAG")
    graph.add_argument("workflow", metavar="WORKFLOW_FILE")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    _add_process_commands(commands)
    add_simulate_parser(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("cordtrio")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _add_process_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``, ``worker``, ``workflows``, ``runs``: cordtrio as processes over Redis and
    the nng bus (docs/processes.md). Each module sets ``handler`` on its parser."""
    from . import runs_cmd, serve, worker_cmd, workflows_cmd

    for module in (serve, worker_cmd, workflows_cmd, runs_cmd):
        module.add_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cordtrio`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if getattr(args, "handler", None) is not None:  # the process commands
            return int(args.handler(args))
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            return _validate(args)
        return _graph(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `cordtrio run ... --json | head`
        _silence_stdout()
        return EXIT_RUN_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _console() -> Console:
    console = Console(file=sys.stdout)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=sys.stdout, width=120)  # not 80: tables stay readable in logs
    return console


def _run(args: argparse.Namespace) -> int:
    # the live display or the summary reports what happens; the log only what goes wrong
    configure_logging("warning")
    workflow = read_workflow(args.workflow)
    payload = parse_input(args.input)
    check_input(workflow, payload)
    handlers = load_handlers(args.handlers) if args.handlers else None
    check_handlers(workflow, handlers, args.handlers)
    if args.max_concurrency < 1:
        raise CliError("--max-concurrency must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise CliError("--timeout must be positive")
    console = _console()
    view = make_view(console, quiet=args.quiet, json_output=args.json)
    options = RunOptions(input=payload, handlers=handlers, approve_all=args.approve_all,
                         timeout=args.timeout, max_concurrency=args.max_concurrency)
    try:
        outcome = trio.run(execute, workflow, options, view)
    except BaseExceptionGroup as group:
        error = _single(group)
        if isinstance(error, (CliError, KeyboardInterrupt)):
            raise error from None
        raise
    run = outcome.run
    if args.json:
        document = run.to_dict()
        document["timeline"] = [event.to_dict() for event in outcome.timeline]
        print(json_text(document))
    elif args.quiet:
        console.print(outcome_text(workflow, run), soft_wrap=True)
        for line in step_errors(run):
            print(f"{PROG}: {line}", file=sys.stderr)
    else:
        print_report(console, workflow, run, outcome.timeline, outcome.alerts)
    if outcome.waiting:
        steps = ", ".join(repr(s) for s in outcome.waiting)
        print(f"{PROG}: run {run.id} is waiting for approval of step {steps}; nothing else "
              "can proceed. Re-run with --approve-all to approve automatically.",
              file=sys.stderr)
        return EXIT_WAITING
    return EXIT_OK if run.status == RunStatus.SUCCEEDED else EXIT_RUN_FAILED


def _single(error: BaseException) -> BaseException:
    """The only leaf of nested one-member exception groups (else the group itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _validate(args: argparse.Namespace) -> int:
    workflow = read_workflow(args.workflow)
    if args.handlers:
        check_handlers(workflow, load_handlers(args.handlers), args.handlers)
    print("ok")
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    workflow = read_workflow(args.workflow)
    print(to_dot(workflow) if args.format == "dot" else to_mermaid(workflow))
    return EXIT_OK
