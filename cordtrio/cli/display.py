"""How ``cordtrio run`` shows a run: progress while it runs, a summary when it ends.

Three views get the same calls (engine hooks, a store poll every ~0.1 s, notes and alerts):
``LiveView`` redraws a rich ``Live`` panel (a TTY); ``PlainView`` prints one line per event
(stdout not a TTY); ``RunView`` itself shows nothing (``--json``, ``--quiet``).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..model import StepRun, StepStatus, Workflow, WorkflowRun
from ..ports import Clock
from ..protocol import SystemAlert
from .output import error_text
from .report import STATUS_STYLE, attempt_of, fmt_seconds, is_child, retry_wait, step_counts


class RunView:
    """The interface of a view; this base class shows nothing."""

    workflow: Workflow
    clock: Clock
    run_id: str = ""
    t0: float = 0.0
    handlers: frozenset[str] = frozenset()
    """``on_error`` handler steps (not shown until triggered)."""

    def begin(self, workflow: Workflow, clock: Clock, run_id: str) -> None:
        """The run ``run_id`` is about to be submitted."""
        self.workflow = workflow
        self.clock = clock
        self.run_id = run_id
        self.t0 = trio.current_time()
        self.handlers = frozenset(s.on_error for s in workflow.steps.values() if s.on_error)
        self._retries_seen: set[tuple[str, int]] = set()

    def dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        """Engine hook ``on_step_dispatched``."""

    def finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        """Engine hook ``on_step_finished``."""

    def observe(self, run: WorkflowRun) -> None:
        """The run as stored right now (polled)."""

    def note(self, kind: str, step_id: str, text: str) -> None:
        """Something the command did (approved a step, cancelled the run, ...)."""

    def alert(self, alert: SystemAlert) -> None:
        """A ``notify`` step's alert seen on ``sys.workflow.event``."""

    def end(self) -> None:
        """The run is over (or the command gives up on it)."""

    def elapsed(self) -> float:
        return trio.current_time() - self.t0

    def new_retries(self, run: WorkflowRun) -> list[tuple[str, StepRun, float]]:
        """Steps and children that went into retry backoff since the last call:
        ``(id, step run, seconds until the next attempt)``."""
        out: list[tuple[str, StepRun, float]] = []
        now = self.clock.now()
        for step_id, sr in _all_step_runs(run):
            wait = retry_wait(sr, now)
            if wait is not None and (step_id, sr.attempts) not in self._retries_seen:
                self._retries_seen.add((step_id, sr.attempts))
                out.append((step_id, sr, wait))
        return out


def alert_text(alert: SystemAlert) -> str:
    code = f" {alert.code}" if alert.code else ""
    return f"{alert.level}{code}: {alert.message}"


class PlainView(RunView):
    """One line per event. ``verbose`` adds dispatches and for-each children's results."""

    def __init__(self, console: Console, *, verbose: bool) -> None:
        self.console = console
        self.verbose = verbose
        self._waiting: set[str] = set()

    def _line(self, kind: str, step_id: str = "", text: str = "") -> None:
        line = f"[{self.elapsed():7.2f}s] {kind:<9} {step_id:<16} {text}".rstrip()
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def begin(self, workflow: Workflow, clock: Clock, run_id: str) -> None:
        super().begin(workflow, clock, run_id)
        self._line("start", "", f"run {run_id} of workflow {workflow.id!r} "
                                f"({len(workflow.steps)} steps)")

    def dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        if self.verbose:
            attempt = attempt_of(job_id)
            self._line("dispatch", step_id, f"attempt {attempt}" if attempt > 1 else "")

    def finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        if self.verbose or not is_child(self.workflow, step_id):
            self._line(str(status.value), step_id)

    def observe(self, run: WorkflowRun) -> None:
        for step_id, sr in _all_step_runs(run):
            if sr.status == StepStatus.WAITING and step_id not in self._waiting:
                self._waiting.add(step_id)
                self._line("waiting", step_id, "waiting for approval")
        for step_id, sr, wait in self.new_retries(run):
            self._line("retry", step_id, f"attempt {sr.attempts} failed: {_error(sr)}; "
                                         f"next attempt in {wait:.1f}s")

    def note(self, kind: str, step_id: str, text: str) -> None:
        self._line(kind, step_id, text)

    def alert(self, alert: SystemAlert) -> None:
        self._line("notify", "", alert_text(alert))


def _error(sr: StepRun) -> str:
    return error_text(sr.error) or "failed"


def _all_step_runs(run: WorkflowRun) -> list[tuple[str, StepRun]]:
    out: list[tuple[str, StepRun]] = []
    for step_id, sr in run.steps.items():
        out.append((step_id, sr))
        out.extend(sr.children.items())
    return out


ICONS = {
    "pending": "·", "running": "▶", "waiting": "⏸", "succeeded": "✔", "failed": "✘",
    "cancelled": "⊘", "timed_out": "⌛", "retrying": "↻",
}


class LiveView(RunView):
    """A rich ``Live`` panel: status counts, one row per step, a bar per for-each step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.run: WorkflowRun | None = None
        self.recent: deque[Text] = deque(maxlen=6)
        self.live = Live(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=True, redirect_stderr=True)

    def begin(self, workflow: Workflow, clock: Clock, run_id: str) -> None:
        super().begin(workflow, clock, run_id)
        self.live.start()
        self._refresh()

    def _event(self, text: str, style: str = "dim") -> None:
        self.recent.append(Text(f"{self.elapsed():6.2f}s  {text}", style=style))

    def dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        attempt = attempt_of(job_id)
        self._event(f"dispatched {step_id}" + (f" (attempt {attempt})" if attempt > 1 else ""))

    def finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self._event(f"{step_id} {status.value}", STATUS_STYLE.get(status.value, "dim"))

    def note(self, kind: str, step_id: str, text: str) -> None:
        self._event(f"{kind} {step_id} {text}".replace("  ", " "), "bold yellow")

    def alert(self, alert: SystemAlert) -> None:
        self._event(f"notify {alert_text(alert)}", "bold blue")

    def observe(self, run: WorkflowRun) -> None:
        self.run = run
        for step_id, sr, wait in self.new_retries(run):
            self._event(f"{step_id} attempt {sr.attempts} failed: {_error(sr)}; "
                        f"retry in {wait:.1f}s", "yellow")
        self._refresh()

    def end(self) -> None:
        self._refresh()
        self.live.stop()

    def _refresh(self) -> None:
        self.live.update(self.render(), refresh=True)

    def render(self) -> RenderableType:
        wf, run = self.workflow, self.run
        status = run.status.value if run is not None else "starting"
        header = Text.assemble(
            ("cordtrio ", "bold"), (wf.id, "bold cyan"),
            "  run ", (self.run_id or "-", "dim"), "  ",
            (status, STATUS_STYLE.get(status, "")), f"  {self.elapsed():.1f}s",
        )
        counts = step_counts(wf, run)
        summary = Text.assemble(
            (f"{counts['done']} done", "green"), "  ", (f"{counts['running']} running", "cyan"),
            "  ", (f"{counts['failed']} failed", "red" if counts["failed"] else "dim"), "  ",
            (f"{counts['waiting']} waiting", "yellow" if counts["waiting"] else "dim"),
            "  ", (f"{counts['pending']} pending", "dim"),
        )
        grid = Table.grid(padding=(0, 1))
        for _ in range(5):
            grid.add_column(no_wrap=True)
        now = self.clock.now()
        for step_id, step in wf.steps.items():
            sr = run.steps.get(step_id) if run is not None else None
            if sr is None and step_id in self.handlers:
                continue  # an on_error handler nobody triggered
            grid.add_row(*self._row(step_id, sr, bool(step.for_each), now))
        parts: list[RenderableType] = [header, summary, Text(""), grid]
        if self.recent:
            parts += [Text(""), *self.recent]
        return Group(*parts)

    def _row(self, step_id: str, sr: StepRun | None,
             fan_out: bool, now: datetime) -> list[RenderableType]:
        state = sr.status.value if sr is not None else "pending"
        detail = ""
        bar: RenderableType = Text("")
        if sr is not None and retry_wait(sr, now) is not None:
            state = "retrying"
            detail = f"attempt {sr.attempts} failed: {error_text(sr.error)}"
        elif sr is not None and state == "waiting":
            detail = "waiting for approval (--approve-all approves it)"
        elif sr is not None and fan_out and sr.children:
            kids = list(sr.children.values())
            done = sum(c.status == StepStatus.SUCCEEDED for c in kids)
            running = sum(c.status == StepStatus.RUNNING for c in kids)
            retrying = sum(retry_wait(c, now) is not None for c in kids)
            bar = ProgressBar(total=len(kids), completed=done, width=28)
            detail = f"{done}/{len(kids)}"
            if running:
                detail += f"  {running} running"
            if retrying:
                detail += f"  {retrying} retrying"
        elif sr is not None and sr.started_at is not None:
            end = sr.completed_at or now
            detail = fmt_seconds((end - sr.started_at).total_seconds())
            if sr.attempts > 1:
                detail += f"  attempt {sr.attempts}"
            if sr.error and state != "succeeded":
                detail += f"  {sr.error.get('message', '')}"
        style = "yellow" if state == "retrying" else STATUS_STYLE.get(state, "")
        return [Text(ICONS.get(state, " "), style=style), Text(step_id, style="bold"),
                Text(state, style=style), bar, Text(detail, style="dim")]


def make_view(console: Console, *, quiet: bool, json_output: bool) -> RunView:
    """``--json`` and ``--quiet`` show no progress; a terminal gets the live panel, anything
    else a line per event."""
    if json_output or quiet:
        return RunView()
    if not console.is_terminal or console.is_dumb_terminal:
        return PlainView(console, verbose=True)
    return LiveView(console)
