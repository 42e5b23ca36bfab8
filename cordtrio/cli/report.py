"""The end-of-run report of ``cordtrio run`` (summary table, notifications, timeline) and
the small formatting helpers the progress views share with it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..model import StepRun, StepStatus, TimelineEvent, Workflow, WorkflowRun
from ..protocol import SystemAlert
from .output import error_text

STATUS_STYLE = {
    "pending": "dim", "running": "cyan", "waiting": "yellow", "succeeded": "green",
    "failed": "red", "cancelled": "magenta", "timed_out": "red", "not run": "dim",
}
PREVIEW_WIDTH = 60
STEP_MIN_WIDTH = 24
"""The Step column never gets narrower than its longest id, up to this many characters."""
MAX_CHILD_ROWS = 12
"""For-each steps with more children show only the children that failed or retried."""


def attempt_of(job_id: str) -> int:
    """The ``@n`` suffix of a job id (1 when absent)."""
    _, sep, suffix = job_id.rpartition("@")
    return int(suffix) if sep and suffix.isdigit() else 1


def is_child(workflow: Workflow, step_id: str) -> bool:
    """True for a for-each child id such as ``extract[3]``."""
    return step_id not in workflow.steps and step_id.endswith("]")


def child_index(child_id: str) -> int:
    """The ``i`` of a for-each child id ``step[i]`` (0 if malformed)."""
    _, _, rest = child_id.rpartition("[")
    digits = rest.rstrip("]")
    return int(digits) if digits.isdigit() else 0


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def retry_wait(sr: StepRun, now: datetime) -> float | None:
    """Seconds until a step (or child) in retry backoff is tried again; ``None`` if it is
    not in backoff."""
    if sr.status != StepStatus.PENDING or sr.next_attempt_at is None or not sr.attempts:
        return None
    return max(0.0, (sr.next_attempt_at - now).total_seconds())


def step_counts(workflow: Workflow, run: WorkflowRun | None) -> dict[str, int]:
    """Top-level steps by state (untriggered ``on_error`` handlers are not counted)."""
    counts = dict.fromkeys(("done", "running", "failed", "waiting", "pending"), 0)
    handlers = {s.on_error for s in workflow.steps.values() if s.on_error}
    for step_id in workflow.steps:
        sr = run.steps.get(step_id) if run is not None else None
        if sr is None:
            if step_id not in handlers:
                counts["pending"] += 1
        elif sr.status == StepStatus.SUCCEEDED:
            counts["done"] += 1
        elif sr.status == StepStatus.RUNNING:
            counts["running"] += 1
        elif sr.status == StepStatus.WAITING:
            counts["waiting"] += 1
        elif sr.status.is_terminal:
            counts["failed"] += 1
        else:
            counts["pending"] += 1
    return counts


def preview(value: Any, width: int = PREVIEW_WIDTH) -> str:
    """A one-line, shortened rendering of an output value."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _duration(sr: StepRun) -> str:
    if sr.started_at is None or sr.completed_at is None:
        return ""
    return fmt_seconds((sr.completed_at - sr.started_at).total_seconds())


def _output_of(run: WorkflowRun, step_id: str, sr: StepRun) -> str:
    if sr.error and sr.status != StepStatus.SUCCEEDED:
        return error_text(sr.error)
    entry = run.context.get("steps", {}).get(step_id)
    if isinstance(entry, dict) and "output" in entry:
        return preview(entry["output"])
    return preview(sr.output)


def summary_table(workflow: Workflow, run: WorkflowRun,
                  timeline: list[TimelineEvent]) -> Table:
    skipped = {e.step_id for e in timeline if e.type == "step_skipped"}
    handlers = {s.on_error for s in workflow.steps.values() if s.on_error}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title="Steps", title_justify="left",
                  title_style="bold")
    # Step and Status keep their width; a long output or error wraps in its own column.
    table.add_column("Step", no_wrap=True, min_width=min(STEP_MIN_WIDTH, max(
        [4, *(len(sid) + 2 for sid in run.steps), *(len(sid) for sid in workflow.steps)])))
    table.add_column("Status", no_wrap=True, min_width=len("succeeded"))
    table.add_column("Attempts", justify="right", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Output", overflow="fold", ratio=1)
    for step_id in workflow.steps:
        sr = run.steps.get(step_id)
        if sr is None:
            why = "on_error handler, not triggered" if step_id in handlers else ""
            table.add_row(Text(step_id), Text("not run", style="dim"), "", "", Text(why))
            continue
        status = sr.status.value + (" (skipped)" if step_id in skipped else "")
        style = STATUS_STYLE.get(sr.status.value, "")
        attempts = sr.attempts
        output = _output_of(run, step_id, sr)
        if sr.children:  # Attempts stays the parent's own; its children are counted here
            kids = list(sr.children.values())
            ok = sum(c.status == StepStatus.SUCCEEDED for c in kids)
            retried = sum(c.attempts > 1 for c in kids)
            output = f"{ok}/{len(kids)} items succeeded" + (
                f", {retried} retried" if retried else "") + (
                f"; {output}" if output and sr.status != StepStatus.SUCCEEDED else "")
        table.add_row(Text(step_id, style="bold"), Text(status, style=style),
                      str(attempts or ""), _duration(sr), Text(output))
        _add_child_rows(table, run, sr)
    return table


def _add_child_rows(table: Table, run: WorkflowRun, parent: StepRun) -> None:
    """One row per child; past ``MAX_CHILD_ROWS`` only the retried or failed ones, and a
    row counting the others by status."""
    many = len(parent.children) > MAX_CHILD_ROWS
    hidden: dict[str, int] = {}
    for child_id, child in sorted(parent.children.items(), key=lambda kv: child_index(kv[0])):
        notable = child.attempts > 1 or child.status in (StepStatus.FAILED,
                                                         StepStatus.TIMED_OUT)
        if many and not notable:
            hidden[child.status.value] = hidden.get(child.status.value, 0) + 1
            continue
        table.add_row(Text(f"  {child_id}"),
                      Text(child.status.value, style=STATUS_STYLE.get(child.status.value, "")),
                      str(child.attempts or ""), _duration(child),
                      Text(_output_of(run, child_id, child)))
    if hidden:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(hidden.items()))
        table.add_row(Text(f"  ... {sum(hidden.values())} more", style="dim"), "", "", "",
                      Text(counts, style="dim"))


def event_message(event: TimelineEvent) -> str:
    data = event.data or {}
    if event.type == "run_status":
        return f"run {event.status}" + (f": {event.message}" if event.message else "")
    if event.type == "step_dispatched":
        return f"attempt {attempt_of(event.job_id)}"
    if event.type == "step_condition_evaluated":
        return f"value = {json.dumps(data.get('value'))}"
    if event.type == "step_retry_scheduled":
        return f"{event.message}; retry in {data.get('backoff_sec', '?')}s"
    if event.type == "step_delay_started":
        return f"delay {data.get('delay_ms', '?')} ms"
    parts = [p for p in (event.status, event.message) if p]
    return ": ".join(parts)


def timeline_table(run: WorkflowRun, timeline: list[TimelineEvent]) -> Table:
    base = run.started_at or (timeline[0].time if timeline else None)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title="Timeline", title_justify="left",
                  title_style="bold")
    table.add_column("Time", justify="right", no_wrap=True)
    table.add_column("Type", no_wrap=True)
    table.add_column("Step", no_wrap=True)
    table.add_column("Message", overflow="fold")
    for event in timeline:
        when = ""
        if event.time is not None and base is not None:
            when = f"+{(event.time - base).total_seconds():.3f}s"
        table.add_row(when, Text(event.type), Text(event.step_id), Text(event_message(event)))
    return table


def print_report(console: Console, workflow: Workflow, run: WorkflowRun,
                 timeline: list[TimelineEvent], alerts: list[SystemAlert]) -> None:
    """The summary printed when ``cordtrio run`` ends (not in ``--json`` mode)."""
    console.print()
    console.print(summary_table(workflow, run, timeline))
    console.print()
    if alerts:
        console.print(Text("Notifications", style="bold"))
        for alert in alerts:
            code = f" [{alert.code}]" if alert.code else ""
            console.print(Text(f"  {alert.level}{code} {alert.message}"))
        console.print()
    console.print(timeline_table(run, timeline))
    console.print()
    console.print(outcome_text(workflow, run))


def outcome_text(workflow: Workflow, run: WorkflowRun) -> Text:
    """``run <id> of 'wf': succeeded in 1.20s`` (and the run's error when it has one)."""
    took = ""
    if run.started_at is not None and run.completed_at is not None:
        took = f" in {fmt_seconds((run.completed_at - run.started_at).total_seconds())}"
    style = STATUS_STYLE.get(run.status.value, "")
    error = run.error if isinstance(run.error, dict) else {}
    why = ""
    if error.get("message") and run.status != StepStatus.SUCCEEDED:
        where = f"step {error['step_id']!r}: " if error.get("step_id") else ""
        why = f": {where}{error_text(error)}"
    return Text.assemble(f"run {run.id} of {workflow.id!r}: ",
                         (run.status.value, f"bold {style}"), took, why)


def step_errors(run: WorkflowRun) -> list[str]:
    """``step 'x': <error>`` for every step and child that ended failed or timed out."""
    out = []
    for step_id, sr in run.steps.items():
        for item_id, item in ((step_id, sr), *sr.children.items()):
            if item.status in (StepStatus.FAILED, StepStatus.TIMED_OUT) and item.error:
                message = error_text(item.error)
                out.append(f"step {item_id!r} {item.status.value}: {message}")
    return out
