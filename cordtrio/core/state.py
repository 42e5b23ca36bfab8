"""The run as the core sees it: the stored document plus indexes rebuilt from it.

``RunState`` owns a ``WorkflowRun`` and, per for-each parent, a ``FanoutIndex`` so that a
child result costs O(log n) instead of a scan of every sibling, and the ready pass's
``Frontier`` so that an event costs O(what changed) instead of a walk over every step. The
indexes are derived data: they are never stored and are rebuilt from the run on load.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import NO_DATA, StepRun, StepStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges
from ..protocol import JobPriority
from .events import Effect
from .frontier import Frontier
from .plan import Plan

_no_changes = RunChanges.none_yet
_PRIORITIES = {
    "critical": JobPriority.CRITICAL,
    "interactive": JobPriority.INTERACTIVE,
    "batch": JobPriority.BATCH,
}
_BATCH = JobPriority.BATCH
_new = object.__new__


def child_id(step_id: str, index: int) -> str:
    return f"{step_id}[{index}]"


def child_index(cid: str) -> int:
    return int(cid[cid.rindex("[") + 1 : -1])


@dataclass
class FanoutIndex:
    """Counters and queues of one for-each parent.

    Children are dispatched in index order: ``next_fresh`` is the lowest never-dispatched
    child (fresh children always form a suffix), ``ready`` a heap of retried children whose
    backoff is over, ``backoff`` the retried children still waiting.
    """

    total: int = 0
    next_fresh: int = 0
    ready: list[int] = field(default_factory=list)
    backoff: set[int] = field(default_factory=set)
    running: int = 0
    succeeded: int = 0
    failed: int = 0  # failed, cancelled or timed_out

    @classmethod
    def rebuild(cls, parent: StepRun, step_id: str, now: datetime) -> FanoutIndex:
        idx = cls(total=len(parent.children))
        fresh: list[int] = []
        for cid, child in parent.children.items():
            i = child_index(cid)
            status = child.status
            if status == StepStatus.RUNNING:
                idx.running += 1
            elif status == StepStatus.SUCCEEDED:
                idx.succeeded += 1
            elif status.is_terminal:
                idx.failed += 1
            elif child.attempts == 0:
                fresh.append(i)
            elif child.next_attempt_at is not None and child.next_attempt_at > now:
                idx.backoff.add(i)
            else:
                idx.ready.append(i)
        heapq.heapify(idx.ready)
        idx.next_fresh = min(fresh) if fresh else idx.total
        # Fresh children below next_fresh cannot exist, but be robust to odd stored data:
        # any fresh child below the minimum is impossible by construction of min().
        return idx

    def has_pending(self) -> bool:
        return self.next_fresh < self.total or bool(self.ready) or bool(self.backoff)

    def pop_next(self) -> int | None:
        """The lowest-index child ready to dispatch, or None."""
        if self.ready and (self.ready[0] < self.next_fresh or self.next_fresh >= self.total):
            return heapq.heappop(self.ready)
        if self.next_fresh < self.total:
            i = self.next_fresh
            self.next_fresh += 1
            return i
        return None

    def push_back(self, i: int) -> None:
        """Undo ``pop_next`` for a child that could not be dispatched this time."""
        if i == self.next_fresh - 1:
            self.next_fresh -= 1
        else:
            heapq.heappush(self.ready, i)


@dataclass(slots=True)
class RunJobs:
    """What every job of a run says alike (SPEC §5), worked out once per run by its first
    (``RunState.jobs``, ``dispatch.emit_job``): the run's fields it reads never change."""

    env: dict[str, str]
    """The job's ``env`` but its ``step_id`` (in its place, empty)."""
    workflow_id: str
    priority: JobPriority
    memory_id: str
    dry_run: bool
    plain: bool
    """Not ``dry_run``, and the run has no ``org_id``: with ``JobShape.plain``, a job has
    only the three labels, no budget and no metadata."""

    @classmethod
    def of(cls, plan: Plan, run: WorkflowRun) -> RunJobs:
        priority = _BATCH
        memory_id = ""
        run_input = run.input
        if run_input:  # a run without input (the common case) has neither to look up
            raw_priority = run_input.get("priority")
            if isinstance(raw_priority, str):
                priority = _PRIORITIES.get(raw_priority.strip().lower(), _BATCH)
            raw_memory = run_input.get("memory_id")
            if isinstance(raw_memory, str):
                memory_id = raw_memory.strip()
        memory_id = memory_id or f"run:{run.id}"
        env = {
            "workflow_id": plan.workflow.id,
            "run_id": run.id,
            "step_id": "",
            "tenant_id": run.org_id,
            "team_id": run.team_id,
            "memory_id": memory_id,
            "context_mode": "raw",
        }
        dry_run = run.dry_run or run.metadata.get("dry_run") == "true"
        if dry_run:
            env["dry_run"] = "true"
        return cls(env, plan.workflow.id, priority, memory_id, dry_run,
                   not dry_run and not run.org_id)


@dataclass
class RunState:
    """A run and its derived indexes. The core mutates it in place (see ``Tx``)."""

    run: WorkflowRun
    fanouts: dict[str, FanoutIndex] = field(default_factory=dict)
    frontier: Frontier | None = None
    """Built by the first ready pass (``ready.frontier``) or a new run's short start
    (``quick.quick_start``), then fed by ``Tx.touch_step``."""
    jobs: RunJobs | None = None
    """What every job of the run says alike, found by its first (``dispatch.emit_job``)."""
    started: dict[str, StepRun] = field(default_factory=dict)
    """Top-level jobs started since the load, by job id: the StepRun each set running
    (``quick._start_plain``, ``dispatch.start_job``), so that the short way finds a
    result's step without parsing its id (``quick.quick_result``, which checks the StepRun
    is still that attempt's and running). A job's entry goes with its result
    (``apply_result`` too) or its step's next attempt; one whose attempt ended otherwise
    (a timeout, a cancellation) stays until then, and no longer matches."""

    def fanout(self, step_id: str, now: datetime) -> FanoutIndex:
        idx = self.fanouts.get(step_id)
        if idx is None:
            parent = self.run.steps[step_id]
            idx = FanoutIndex.rebuild(parent, step_id, now)
            self.fanouts[step_id] = idx
        return idx


@dataclass(slots=True)
class Outcome:
    """What one event did: effects for the shell, the timeline rows to record with the
    changes (apart from the effects: the shell writes them all together, and it need not
    tell them from the effects it carries out one by one), and the parts of the run that
    changed."""

    effects: list[Effect] = field(default_factory=list)
    changes: RunChanges = field(default_factory=RunChanges)
    rows: list[TimelineEvent] = field(default_factory=list)


class Tx(Outcome):
    """The working area of one ``decide`` call: inputs, and the effects and changes it
    accumulates. Core functions take a ``Tx`` and append to it; nothing here does I/O.
    It is also the ``Outcome`` that ``decide`` returns: one object less per event.

    A plain slotted class rather than a dataclass: one is made per event, and a generated
    ``__init__`` with default factories and ``__post_init__`` costs twice as much."""

    __slots__ = ("now", "plan", "run", "state")

    def __init__(self, plan: Plan, state: RunState, now: datetime) -> None:
        run = state.run
        self.plan = plan
        self.state = state
        self.now = now
        self.effects: list[Effect] = []
        self.rows: list[TimelineEvent] = []
        self.run: WorkflowRun = run
        """``state.run``, read a score of times per event: an attribute, not a property."""
        self.changes = _no_changes(run.status)  # ``previous_status``: the run's status now

    def renew(self, now: datetime) -> Tx:
        """This working area, as a new one for its run at ``now`` would be: for a shell
        done with all its last ``decide`` handed over (the run task renews its own once a
        batch is done with it, and sets only ``now`` for the next: no ``Tx``,
        ``RunChanges``, sets or dicts made per step; nothing the last batch handed over is
        kept alive by it while the run waits: a job's rendered input, say, for as long as
        the job runs). The lists and any filled set or map are replaced, not emptied, but
        the changes record itself is reset: an earlier outcome kept is not one any more.
        Returns ``self`` (tests/core/test_core_tx.py compares it with a new one)."""
        self.now = now
        self.effects = []
        self.rows = []
        changes = self.changes
        changes.header = False
        changes.previous_status = self.run.status
        changes.steps = set()  # (both nearly always filled: not tested first)
        changes.context_steps = set()
        if changes.children:
            changes.children = {}
        if changes.context_keys:
            changes.context_keys = set()
        if changes.payloads:
            changes.payloads = {}
        changes.lease_owner = None
        changes.release_lease = False
        return self

    def touch_step(self, step_id: str) -> None:
        """Record that ``step_id``'s StepRun changed: for the store, and for the frontier."""
        self.changes.steps.add(step_id)
        frontier = self.state.frontier
        if frontier is not None:
            dirty = frontier.dirty
            if not dirty or dirty[-1] != step_id:  # a step is often touched twice in a row
                dirty.append(step_id)

    def touch_child(self, parent: str, cid: str) -> None:
        self.changes.touch_child(parent, cid)

    def touch_header(self) -> None:
        self.changes.header = True

    def timeline(
        self,
        type_: str,
        *,
        step_id: str = "",
        job_id: str = "",
        status: str = "",
        result_ptr: str = "",
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        run = self.run
        self.rows.append(timeline_row(self.now, type_, run.id, run.workflow_id, step_id,
                                         job_id, status, result_ptr, message, data or NO_DATA))


def timeline_row(time: datetime, type_: str, run_id: str, workflow_id: str, step_id: str,
                 job_id: str, status: str, result_ptr: str, message: str,
                 data: dict[str, Any]) -> TimelineEvent:
    """A timeline row with its fields set one by one rather than passed to ``__init__``: a
    third less, and a step makes two or three (tests/core/test_core_timeline.py compares
    rows made so with ``TimelineEvent(...)``'s). A row without data gets ``NO_DATA``, the
    shared read-only empty map, rather than a ``{}`` of its own."""
    event = _new(TimelineEvent)
    event.time = time
    event.type = type_
    event.run_id = run_id
    event.workflow_id = workflow_id
    event.step_id = step_id
    event.job_id = job_id
    event.status = status
    event.result_ptr = result_ptr
    event.message = message
    event.data = data
    return event
