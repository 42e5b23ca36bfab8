"""``cordtrio runs``: submit, inspect and steer runs of a deployment from the shell.

Mutations (``submit``, ``approve``, ``cancel``, ``rerun``) go through
``cordtrio.client.Client``, which writes them into Redis for a ``cordtrio serve`` engine to
apply; reads (``list``, ``show``, ``timeline``, ``wait``) go straight to the store.
Exit status: 0 ok (for ``--wait``/``wait``: the run succeeded), 1 the run failed, was
cancelled or timed out, 2 bad input (unknown run or step, invalid input, a step not waiting),
4 Redis unreachable, 5 ``--timeout`` passed before the run finished.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import trio
from rich import box
from rich.table import Table

from ..errors import CordtrioError, InvalidStateError, NotFoundError, ValidationError
from ..model import RunStatus, WorkflowRun
from ..timeutil import format_ts
from .loading import EXIT_OK, EXIT_RUN_FAILED, CliError, parse_input
from .output import add_json_argument, console, print_json
from .process import run_trio
from .remote import add_redis_argument, open_redis, redis_url
from .report import summary_table, timeline_table

EXIT_NOT_FINISHED = 5
POLL_INTERVAL = 0.2
TIMELINE_LIMIT = 10_000


def add_parser(commands: Any) -> None:
    """Register ``cordtrio runs`` and its subcommands."""
    p = commands.add_parser("runs", help="submit, inspect and steer runs in Redis",
                            description="Runs of a `cordtrio serve` deployment.",
                            epilog="Exit status: 0 ok / run succeeded, 1 run failed, "
                                   "cancelled or timed out, 2 bad input, 4 Redis "
                                   "unreachable, 5 --timeout passed first.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    submit = sub.add_parser("submit", help="start a run of a saved workflow")
    submit.add_argument("workflow_id", metavar="WF_ID")
    submit.add_argument("--input", metavar="JSON|@file",
                        help="run input: a JSON object, @file.json, or @- for stdin")
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="submitting again with KEY returns the first run's id")
    submit.add_argument("--label", action="append", default=[], metavar="K=V")
    submit.add_argument("--dry-run", action="store_true")
    _add_wait_arguments(submit, "--wait")

    listing = sub.add_parser("list", help="list runs, newest first")
    listing.add_argument("--status", choices=[s.value for s in RunStatus])
    listing.add_argument("--workflow", metavar="WF_ID")
    listing.add_argument("--limit", type=int, default=50, metavar="N")

    show = sub.add_parser("show", help="a run's steps")
    show.add_argument("run_id", metavar="RUN")
    timeline = sub.add_parser("timeline", help="a run's timeline")
    timeline.add_argument("run_id", metavar="RUN")

    approve = sub.add_parser("approve", help="approve (or --reject) a waiting step")
    approve.add_argument("run_id", metavar="RUN")
    approve.add_argument("step_id", metavar="STEP")
    approve.add_argument("--reject", action="store_true")

    cancel = sub.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run_id", metavar="RUN")

    rerun = sub.add_parser("rerun", help="start a new run from an old one")
    rerun.add_argument("run_id", metavar="RUN")
    rerun.add_argument("--from", dest="step_id", default="", metavar="STEP",
                       help="keep the outputs of the steps STEP depends on; run the rest")
    _add_wait_arguments(rerun, "--wait")

    wait = sub.add_parser("wait", help="wait until a run is finished")
    wait.add_argument("run_id", metavar="RUN")
    wait.add_argument("--timeout", type=float, metavar="S")
    for command in (submit, listing, show, timeline, approve, cancel, rerun, wait):
        add_redis_argument(command)
        add_json_argument(command)
    p.set_defaults(handler=run_runs)


def _add_wait_arguments(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(flag, action="store_true", dest="wait",
                        help="wait for the run to finish; the exit status tells how")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="with --wait: stop waiting after S seconds (exit status 5)")


def run_runs(args: argparse.Namespace) -> int:
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        raise CliError("--timeout must be positive")
    if args.action == "list" and args.limit < 1:
        raise CliError("--limit must be at least 1")
    payload = parse_input(args.input) if args.action == "submit" else None
    labels = _labels(args.label) if args.action == "submit" else None
    result: int = run_trio(_runs, args, redis_url(args), payload, labels)
    return result


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


async def _runs(args: argparse.Namespace, url: str, payload: dict[str, Any] | None,
                labels: dict[str, str] | None) -> int:
    async with open_redis(url) as redis:
        try:
            return await _dispatch(args, redis, payload, labels)
        except NotFoundError as exc:
            raise CliError(str(exc)) from None
        except (InvalidStateError, ValidationError) as exc:
            raise CliError(str(exc)) from None


async def _dispatch(args: argparse.Namespace, redis: Any, payload: dict[str, Any] | None,
                    labels: dict[str, str] | None) -> int:
    store = redis.store
    action = args.action
    if action == "list":
        return await _list(args, store)
    if action in ("show", "timeline", "wait"):
        run = await _get_run(store, args.run_id)
        if action == "show":
            return await _show(args, store, run)
        if action == "timeline":
            return await _timeline(args, store, run)
        return await _wait_and_report(args, store, run.id)
    if action != "submit":
        await _get_run(store, args.run_id)  # "run ... not found" before anything else
    from ..client import Client

    client = Client(store, schemas=redis.schemas)
    if action == "submit":
        run_id = await client.submit(args.workflow_id, payload,
                                     idempotency_key=args.idempotency_key or None,
                                     labels=labels, dry_run=args.dry_run,
                                     triggered_by="cordtrio-cli")
        return await _created(args, store, run_id)
    if action == "rerun":
        run_id = await client.rerun_from(args.run_id, args.step_id)
        return await _created(args, store, run_id)
    if action == "approve":
        await client.approve_step(args.run_id, args.step_id, approved=not args.reject)
        done = "rejected" if args.reject else "approved"
    else:
        await client.cancel_run(args.run_id)
        done = "cancelled"
    if args.json:
        print_json({"run_id": args.run_id, "action": done,
                    **({"step_id": args.step_id} if action == "approve" else {})})
    else:
        what = f"step {args.step_id!r} of run" if action == "approve" else "run"
        print(f"{done} {what} {args.run_id}")
    return EXIT_OK


async def _get_run(store: Any, run_id: str) -> WorkflowRun:
    try:
        run: WorkflowRun = await store.get_run(run_id)
    except NotFoundError:
        raise CliError(f"run {run_id!r} not found") from None
    return run


async def _created(args: argparse.Namespace, store: Any, run_id: str) -> int:
    if not args.wait:
        if args.json:
            print_json({"run_id": run_id})
        else:
            print(run_id, flush=True)
        return EXIT_OK
    if not args.json:
        print(f"run {run_id} submitted; waiting", flush=True)
    return await _wait_and_report(args, store, run_id)


async def _wait_and_report(args: argparse.Namespace, store: Any, run_id: str) -> int:
    run = None
    with trio.move_on_after(args.timeout if args.timeout else float("inf")):
        run = await wait_for_run(store, run_id)
    if run is None:
        current = await _get_run(store, run_id)
        if args.json:
            print_json(current.to_dict())
        else:
            print(f"run {run_id} is still {current.status.value} after {args.timeout:g}s")
        return EXIT_NOT_FINISHED
    if args.json:
        print_json(run.to_dict())
    else:
        print(f"run {run.id}: {run.status.value}" + _error_suffix(run))
    return EXIT_OK if run.status == RunStatus.SUCCEEDED else EXIT_RUN_FAILED


async def wait_for_run(store: Any, run_id: str,
                       poll_interval: float = POLL_INTERVAL) -> WorkflowRun:
    """Poll the store until the run is terminal (works with any engine driving it)."""
    while True:
        run: WorkflowRun = await store.get_run(run_id)
        if run.status.is_terminal:
            return run
        await trio.sleep(poll_interval)


def _error_suffix(run: WorkflowRun) -> str:
    message = (run.error or {}).get("message") if isinstance(run.error, dict) else None
    return f" ({message})" if message else ""


async def _list(args: argparse.Namespace, store: Any) -> int:
    runs: list[WorkflowRun]
    if args.status:
        ids = await store.list_run_ids_by_status(args.status, args.limit)
        runs = []
        for run_id in ids:
            try:
                runs.append(await store.get_run(run_id))
            except NotFoundError:
                continue
    elif args.workflow:
        runs = await store.list_runs_by_workflow(args.workflow, args.limit)
    else:
        runs = await store.list_runs(0, args.limit)
    if args.json:
        print_json([_run_summary(r) for r in runs])
    else:
        console().print(runs_table(runs))
    return EXIT_OK


def _run_summary(run: WorkflowRun) -> dict[str, Any]:
    return {"id": run.id, "workflow_id": run.workflow_id, "status": run.status.value,
            "created_at": format_ts(run.created_at),
            "completed_at": format_ts(run.completed_at)}


def runs_table(runs: list[WorkflowRun]) -> Table:
    """Run ids are never shortened (they are what every other command takes) and the status
    always shows; the workflow id is ellipsized and the times wrap when space is short."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    id_width = max([len("Run"), *(len(run.id) for run in runs)])
    status_width = max(len(s.value) for s in RunStatus)
    table.add_column("Run", no_wrap=True, min_width=id_width)
    table.add_column("Workflow", overflow="ellipsis", min_width=5)
    table.add_column("Status", no_wrap=True, min_width=status_width)
    table.add_column("Created", overflow="fold", min_width=10)
    table.add_column("Completed", overflow="fold", min_width=10)
    for run in runs:
        table.add_row(run.id, run.workflow_id, run.status.value,
                      _when(run.created_at), _when(run.completed_at))
    return table


def _when(value: datetime | None) -> str:
    """A timestamp to the second in RFC 3339 UTC, with a space for the ``T`` (which RFC 3339
    allows for readability) so that a narrow column wraps it between date and time:
    ``2026-12-02 23:03:11Z``. ``--json`` keeps the full ``2026-12-02T23:03:11.761171Z``."""
    if value is None:
        return ""
    return (format_ts(value.replace(microsecond=0)) or "").replace("T", " ")


async def _show(args: argparse.Namespace, store: Any, run: WorkflowRun) -> int:
    if args.json:
        print_json(run.to_dict())
        return EXIT_OK
    out = console()
    try:
        workflow = await store.get_workflow(run.workflow_id)
    except CordtrioError:
        workflow = None
    out.print(f"run {run.id} of {run.workflow_id!r}: {run.status.value}"
              + _error_suffix(run))
    if workflow is not None:
        out.print(summary_table(workflow, run, []))
    else:
        for step_id, sr in run.steps.items():
            out.print(f"  {step_id}: {sr.status.value} ({sr.attempts} attempts)")
    return EXIT_OK


async def _timeline(args: argparse.Namespace, store: Any, run: WorkflowRun) -> int:
    events = await store.list_timeline_events(run.id, TIMELINE_LIMIT)
    if args.json:
        print_json([e.to_dict() for e in events])
    else:
        console().print(timeline_table(run, events))
    return EXIT_OK


__all__ = ["add_parser", "run_runs", "runs_table", "wait_for_run"]
