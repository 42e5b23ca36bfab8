"""``cordtrio workflows``: workflow definitions in a deployment's Redis.

``put FILE...`` validates and saves definitions (a new version of an existing id), ``list``
and ``show ID`` read them, ``validate FILE`` checks a file (and, with ``--redis``, that the
schemas it names are registered), ``graph FILE|ID`` draws one. Exit status: 0 ok, 2 bad
input (an invalid file, an unknown id), 4 Redis unreachable.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich import box
from rich.table import Table

from ..errors import CordtrioError, NotFoundError
from ..model import Workflow
from ..timeutil import format_ts
from .graph import to_dot, to_mermaid
from .loading import EXIT_OK, CliError, read_workflow
from .output import add_json_argument, console, print_json
from .process import run_trio
from .remote import add_redis_argument, open_redis, redis_url

LIST_LIMIT = 1000


def add_parser(commands: Any) -> None:
    """Register ``cordtrio workflows`` and its subcommands."""
    p = commands.add_parser("workflows", help="manage workflow definitions in Redis",
                            description="Save, list, show, validate and draw workflows.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    put = sub.add_parser("put", help="validate and save workflow files")
    put.add_argument("files", metavar="FILE", nargs="+",
                     help=".yaml, .yml or .json; all are checked before any is saved")
    listing = sub.add_parser("list", help="list saved workflows")
    listing.add_argument("--org", default="", metavar="ORG_ID", help="only this org's")
    show = sub.add_parser("show", help="print a saved workflow")
    show.add_argument("workflow_id", metavar="ID")
    validate = sub.add_parser("validate", help="check a workflow file")
    validate.add_argument("file", metavar="FILE")
    graph = sub.add_parser("graph", help="print a workflow's DAG (a file or a saved id)")
    graph.add_argument("target", metavar="FILE|ID")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    for command in (put, listing, show, validate, graph):
        add_redis_argument(command)
        add_json_argument(command)
    p.set_defaults(handler=run_workflows)


def run_workflows(args: argparse.Namespace) -> int:
    action = args.action
    if action == "validate":
        workflow = read_workflow(args.file)
        if args.redis or os.environ.get("CORDTRIO_REDIS_URL"):
            run_trio(_check_schemas, redis_url(args), workflow)
        if args.json:
            print_json({"ok": True, "id": workflow.id, "steps": list(workflow.steps)})
        else:
            print(f"ok: workflow {workflow.id!r}, {len(workflow.steps)} steps")
        return EXIT_OK
    if action == "graph" and os.path.isfile(args.target):
        workflow = read_workflow(args.target)
        return _print_graph(workflow, args.format)
    if action == "put":
        workflows = [read_workflow(path) for path in args.files]
        run_trio(_put, redis_url(args), workflows)
        if args.json:
            print_json([{"id": w.id, "saved": True} for w in workflows])
        else:
            for w in workflows:
                print(f"saved workflow {w.id!r} ({len(w.steps)} steps)")
        return EXIT_OK
    if action == "list":
        workflows = run_trio(_list, redis_url(args), args.org)
        if args.json:
            print_json([w.to_dict() for w in workflows])
        else:
            console().print(workflows_table(workflows))
        return EXIT_OK
    workflow_id = args.workflow_id if action == "show" else args.target
    workflow = run_trio(_get, redis_url(args), workflow_id)
    if action == "graph":
        return _print_graph(workflow, args.format)
    if args.json:
        print_json(workflow.to_dict())
    else:
        console().print(steps_table(workflow))
    return EXIT_OK


def _print_graph(workflow: Workflow, fmt: str) -> int:
    print(to_dot(workflow) if fmt == "dot" else to_mermaid(workflow))
    return EXIT_OK


async def _put(url: str, workflows: list[Workflow]) -> None:
    async with open_redis(url) as redis:
        for workflow in workflows:
            await _check_registered(redis, workflow)
        for workflow in workflows:
            try:
                await redis.store.save_workflow(workflow)
            except CordtrioError as exc:
                raise CliError(f"workflow {workflow.id!r}: {exc}") from None


async def _check_schemas(url: str, workflow: Workflow) -> None:
    async with open_redis(url) as redis:
        await _check_registered(redis, workflow)


async def _check_registered(redis: Any, workflow: Workflow) -> None:
    """Every ``input_schema_id`` / ``output_schema_id`` a step names is in the registry."""
    for step_id, step in workflow.steps.items():
        for field in ("input_schema_id", "output_schema_id"):
            schema_id = getattr(step, field, "") or ""
            if not schema_id:
                continue
            try:
                await redis.schemas.get(schema_id)
            except NotFoundError:
                raise CliError(f"workflow {workflow.id!r}: step {step_id!r}: {field} "
                               f"{schema_id!r} is not registered") from None


async def _list(url: str, org: str) -> list[Workflow]:
    async with open_redis(url) as redis:
        return list(await redis.store.list_workflows(org, LIST_LIMIT))


async def _get(url: str, workflow_id: str) -> Workflow:
    async with open_redis(url) as redis:
        try:
            return await redis.store.get_workflow(workflow_id)
        except NotFoundError:
            raise CliError(f"workflow {workflow_id!r} not found in {redis.url}") from None


def workflows_table(workflows: list[Workflow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("ID", no_wrap=True, min_width=max([2, *(len(w.id) for w in workflows)]))
    table.add_column("Name", overflow="ellipsis", no_wrap=True)
    table.add_column("Version", no_wrap=True)
    table.add_column("Steps", no_wrap=True, justify="right")
    table.add_column("Updated", overflow="fold")
    for w in workflows:
        updated = format_ts(w.updated_at.replace(microsecond=0)) if w.updated_at else ""
        table.add_row(w.id, w.name, str(w.version), str(len(w.steps)), updated)
    return table


def steps_table(workflow: Workflow) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False,
                  title=f"{workflow.id}: {workflow.name}", title_justify="left")
    for column in ("Step", "Type", "Topic", "Depends on", "Retries", "Timeout"):
        table.add_column(column, no_wrap=True)
    for step_id, step in workflow.steps.items():
        retries = str(step.retry.max_retries) if step.retry else ""
        table.add_row(step_id, step.type.value, step.topic or "",
                      ", ".join(step.depends_on), retries,
                      f"{step.timeout_sec}s" if step.timeout_sec else "")
    return table


__all__ = ["add_parser", "run_workflows", "steps_table", "workflows_table"]
