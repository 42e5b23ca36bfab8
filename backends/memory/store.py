"""In-memory implementation of the store port (SPEC §11), for tests and the embedded CLI.

Everything is kept as plain JSON-shaped dicts produced by the models' ``to_dict``; objects are
rebuilt with ``from_dict`` on the way out. That makes every value that crosses the API a copy:
mutating an object you passed in or got back never changes the store.

Runs are stored *split* — header, one dict per step (without children), one dict per for-each
child, one entry per ``context["steps"]`` key and per other top-level context key — so that
``save_run_changes`` costs O(size of the change) whatever the size of the run.

Decisions SPEC §11 leaves open (every backend must behave the same; the conformance suite
checks them):

* Listings are newest first. Workflows are ordered by their last save (``updated_at``), runs of
  a workflow by ``created_at``, the global run index and the status index by ``updated_at``;
  ties are broken by the most recent write. ``limit <= 0`` means the method's default limit.
* ``list_runs(cursor_unix)``: ``0`` starts from the newest run; otherwise only runs with
  ``updated_at`` strictly before ``cursor_unix`` (unix seconds) are listed.
* ``list_timeline_events(run_id, limit)`` returns the newest ``limit`` events (of the newest
  1000 kept) in chronological order, oldest first.
* Run timestamps belong to the caller (the engine and its clock): the store only fills a
  missing ``created_at`` (now) and ``updated_at`` (``created_at`` on create, now on later
  writes), on the stored copy *and* on the object passed in, so both stay equal. Workflows get
  ``created_at`` on their first save (kept on later saves) and ``updated_at`` on every save.
* ``create_run`` of an existing id raises ``InvalidStateError``; ``update_run``,
  ``save_run_changes`` and ``delete_*`` of a missing id raise ``NotFoundError``.
* ``create_run`` of a run with an ``idempotency_key`` also claims that key (set-if-absent);
  ``delete_run`` releases the key if it still points at the deleted run.
* Timeline appends do not require the run to exist; an event without ``run_id`` gets the one
  it is appended to, one without ``time`` gets the clock's now.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from cordtrio.clock import SystemClock
from cordtrio.errors import InvalidStateError, NotFoundError, ValidationError
from cordtrio.model import (
    RunStatus,
    StepRun,
    TimelineEvent,
    TimelineRow,
    Workflow,
    WorkflowRun,
    json_copy,
)
from cordtrio.ports import (
    DEFAULT_RUN_LIMIT,
    DEFAULT_STATUS_LIMIT,
    DEFAULT_TIMELINE_LIMIT,
    DEFAULT_WORKFLOW_LIMIT,
    TIMELINE_CAP,
    Clock,
    RunChanges,
    child_order_key,
    status_text,
)
from cordtrio.timeutil import format_ts, parse_ts
from cordtrio.validation import validate_workflow

from .leases import LeaseBook, MemoryRunLeases

log = logging.getLogger(__name__)



# An index maps an id to its sort key: (timestamp, write sequence). Newest = largest.
_Index = dict[str, tuple[float, int]]


def _newest(index: _Index, limit: int) -> list[str]:
    """Ids of ``index`` newest first, at most ``limit`` (O(n log limit))."""
    return [rid for rid, _ in heapq.nlargest(limit, index.items(), key=lambda kv: kv[1])]


def _is_terminal(status: str) -> bool:
    try:
        return RunStatus(status).is_terminal
    except ValueError:
        return False


@dataclass(slots=True)
class _RunRecord:
    """One run, split so each part can be rewritten on its own."""

    header: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    # None rather than an empty dict (64 bytes each, per parked run: W4)
    children: dict[str, dict[str, dict[str, Any]]] | None = None
    context_steps: dict[str, Any] | None = None  # None: the context has no "steps" map
    context_keys: dict[str, Any] | None = None
    # What the indexes currently hold for this run.
    status: str = ""
    org_id: str = ""
    workflow_id: str = ""
    created: float = 0.0
    updated: float = 0.0

    def assemble(self) -> WorkflowRun:
        """A fresh ``WorkflowRun`` (``from_dict`` deep-copies, so nothing is shared)."""
        doc = dict(self.header)
        context = dict(self.context_keys) if self.context_keys else {}
        if self.context_steps is not None:
            context["steps"] = self.context_steps
        doc["context"] = context
        steps: dict[str, Any] = {}
        children = self.children or {}
        for sid, sd in self.steps.items():
            kids = children.get(sid)
            steps[sid] = {**sd, "children": kids} if kids else sd
        doc["steps"] = steps
        return WorkflowRun.from_dict(doc)


def _step_dict(sr: StepRun) -> dict[str, Any]:
    return sr.to_dict(with_children=False)


class MemoryStore(MemoryRunLeases):
    """Workflows, runs (with their indexes), timelines and idempotency keys, in memory; and
    run leases with command inboxes (``RunLeases``, see ``leases.py``) for several engines.

    Every method is a Trio checkpoint and then runs to completion without yielding, so each
    call is atomic with respect to other tasks. ``clock`` (an object with ``now()`` returning
    an aware UTC datetime) stamps the timestamps the store fills in.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._seq = itertools.count()
        self._workflows: dict[str, dict[str, Any]] = {}
        self._parsed: dict[str, Workflow] = {}  # from_dict of each doc, handed out cloned
        self._wf_all: _Index = {}
        self._wf_by_org: dict[str, _Index] = {}
        self._runs: dict[str, _RunRecord] = {}
        self._runs_all: _Index = {}
        self._runs_by_workflow: dict[str, _Index] = {}
        self._runs_by_status: dict[str, _Index] = {}
        # non-terminal runs per org, counted (a set of ids would cost ~70 bytes per run)
        self._active_by_org: dict[str, int] = {}
        # A plain list per run, trimmed to the newest TIMELINE_CAP on append: an empty deque
        # costs ~600 bytes, which parked runs (W4) would pay each.
        # Rows (``TimelineEvent.to_row``), not dicts: half the memory per event.
        self._timelines: dict[str, list[TimelineRow]] = {}
        self._idempotency: dict[str, str] = {}
        self._lease_book = LeaseBook()

    def _now(self) -> datetime:
        return self._clock.now()

    # ------------------------------------------------------------------------ workflows

    async def save_workflow(self, wf: Workflow) -> None:
        """Validate (SPEC §1) and upsert ``wf``; sets ``created_at`` on the first save and
        ``updated_at`` on every save, on the stored copy and on ``wf``."""
        await trio.lowlevel.checkpoint()
        validate_workflow(wf)
        if not wf.id:
            raise ValidationError("workflow id required")
        now = self._now()
        old = self._workflows.get(wf.id)
        created = parse_ts(old.get("created_at")) if old is not None else None
        wf.created_at = created or wf.created_at or now
        wf.updated_at = now
        doc = wf.to_dict()
        if old is not None:
            self._unindex_workflow(wf.id, str(old.get("org_id") or ""))
        self._workflows[wf.id] = doc
        self._parsed[wf.id] = Workflow.from_dict(doc)
        key = (now.timestamp(), next(self._seq))
        self._wf_all[wf.id] = key
        if wf.org_id:
            self._wf_by_org.setdefault(wf.org_id, {})[wf.id] = key

    async def get_workflow(self, workflow_id: str) -> Workflow:
        await trio.lowlevel.checkpoint()
        parsed = self._parsed.get(workflow_id)
        if parsed is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        return parsed.clone()

    async def delete_workflow(self, workflow_id: str) -> None:
        """Remove the definition and its index entries (its runs are kept)."""
        await trio.lowlevel.checkpoint()
        doc = self._workflows.pop(workflow_id, None)
        self._parsed.pop(workflow_id, None)
        if doc is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        self._unindex_workflow(workflow_id, str(doc.get("org_id") or ""))

    def _unindex_workflow(self, workflow_id: str, org_id: str) -> None:
        self._wf_all.pop(workflow_id, None)
        by_org = self._wf_by_org.get(org_id)
        if by_org is not None:
            by_org.pop(workflow_id, None)
            if not by_org:
                del self._wf_by_org[org_id]

    async def list_workflows(
        self, org_id: str = "", limit: int = DEFAULT_WORKFLOW_LIMIT
    ) -> list[Workflow]:
        """Workflows of ``org_id`` (all workflows when empty), most recently saved first."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_WORKFLOW_LIMIT
        index = self._wf_by_org.get(org_id, {}) if org_id else self._wf_all
        out: list[Workflow] = []
        for wid in _newest(index, limit):
            doc = self._workflows.get(wid)
            if doc is None:
                continue
            try:
                out.append(Workflow.from_dict(doc))
            except ValidationError as exc:  # listing skips corrupt entries (SPEC §11)
                log.warning("workflow %r: corrupt entry skipped: %s", wid, exc)
        return out

    # ------------------------------------------------------------------------------ runs

    async def create_run(self, run: WorkflowRun) -> None:
        """Store a new run and index it. Raises ``InvalidStateError`` if the id exists."""
        await trio.lowlevel.checkpoint()
        if not run.id:
            raise ValidationError("run id required")
        if not run.workflow_id:
            raise ValidationError(f"run {run.id!r}: workflow id required")
        if run.id in self._runs:
            raise InvalidStateError(f"run {run.id!r} already exists")
        if run.created_at is None:
            run.created_at = self._now()
        if run.updated_at is None:
            run.updated_at = run.created_at
        record = _RunRecord(header={})
        self._write_whole(record, run)
        self._runs[run.id] = record
        self._reindex(run.id, record, run, new=True)
        if run.idempotency_key:
            self._idempotency.setdefault(run.idempotency_key, run.id)

    async def update_run(self, run: WorkflowRun) -> None:
        """Overwrite every part of an existing run and move its index entries."""
        await trio.lowlevel.checkpoint()
        record = self._record(run.id)
        if run.updated_at is None:
            run.updated_at = self._now()
        self._write_whole(record, run)
        self._reindex(run.id, record, run, new=False)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        """Write only the parts of ``run`` named in ``changes`` (see ``RunChanges``), and
        append ``timeline`` — all in one atomic step.

        A named part that is absent from ``run`` is deleted from the store. Naming
        ``"steps"`` in ``context_keys`` rewrites the whole ``context["steps"]`` map. Indexes
        move only when ``changes.header`` is set.
        """
        await trio.lowlevel.checkpoint()
        if changes.lease_owner is not None:
            self._check_fence(run.id, changes.lease_owner)
        record = self._record(run.id)
        if changes.header:
            if run.updated_at is None:
                run.updated_at = self._now()
            # The input never changes after creation: keep the stored copy (O(1) updates).
            header = run.header_dict(with_input=False)
            if "input" in record.header:
                header["input"] = record.header["input"]
            record.header = header
        # in the run's own order, so a reloaded run lists its steps the same way every time
        ordered = [sid for sid in run.steps if sid in changes.steps]
        ordered += sorted(changes.steps.difference(run.steps))
        for sid in ordered:
            sr = run.steps.get(sid)
            if sr is None:
                record.steps.pop(sid, None)
                if record.children:
                    record.children.pop(sid, None)
            else:
                record.steps[sid] = _step_dict(sr)
        for parent in changes.children:
            self._write_children(record, run, parent, changes.ordered_children(parent))
        # stable orders (not str-hash order), so a reloaded run is the same in every process
        for key in [k for k in run.context if k in changes.context_keys] + sorted(
                changes.context_keys.difference(run.context)):
            self._write_context_key(record, run, key)
        if changes.context_steps:
            self._write_context_steps(
                record, run, sorted(changes.context_steps, key=child_order_key))
        if changes.header:
            self._reindex(run.id, record, run, new=False)
        if timeline:
            self._append(run.id, timeline)

    async def get_run(self, run_id: str) -> WorkflowRun:
        await trio.lowlevel.checkpoint()
        return self._record(run_id).assemble()

    async def delete_run(self, run_id: str) -> None:
        """Remove the run from every index, with its timeline and its idempotency key."""
        await trio.lowlevel.checkpoint()
        record = self._record(run_id)
        del self._runs[run_id]
        self._runs_all.pop(run_id, None)
        self._drop(self._runs_by_workflow, record.workflow_id, run_id)
        self._drop(self._runs_by_status, record.status, run_id)
        if not _is_terminal(record.status):
            self._count_active(record.org_id, -1)
        self._timelines.pop(run_id, None)
        key = str(record.header.get("idempotency_key") or "")
        if key and self._idempotency.get(key) == run_id:
            del self._idempotency[key]

    async def count_active_runs(self, org_id: str) -> int:
        """Number of non-terminal runs of ``org_id``."""
        await trio.lowlevel.checkpoint()
        return self._active_by_org.get(org_id, 0)

    async def list_runs_by_workflow(
        self, workflow_id: str, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """Runs of a workflow, most recently created first."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        ids = _newest(self._runs_by_workflow.get(workflow_id, {}), limit)
        return self._assemble_many(ids)

    async def list_runs(
        self, cursor_unix: int = 0, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """All runs, most recently updated first; with ``cursor_unix > 0`` only those updated
        strictly before that unix time (pass the last page's oldest ``updated_at``)."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        index = self._runs_all
        if cursor_unix > 0:
            index = {rid: key for rid, key in index.items() if key[0] < cursor_unix}
        return self._assemble_many(_newest(index, limit))

    async def list_run_ids_by_status(
        self, status: str, limit: int = DEFAULT_STATUS_LIMIT
    ) -> list[str]:
        """Ids of runs currently in ``status``, most recently updated first."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_STATUS_LIMIT
        return _newest(self._runs_by_status.get(status_text(status), {}), limit)

    # -------------------------------------------------------------------------- timeline

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await trio.lowlevel.checkpoint()
        self._append(run_id, (event,))

    async def append_timeline_events(
        self, run_id: str, events: Sequence[TimelineEvent]
    ) -> None:
        """Append a batch in order (one call for all the events of one transition)."""
        await trio.lowlevel.checkpoint()
        self._append(run_id, events)

    async def list_timeline_events(
        self, run_id: str, limit: int = DEFAULT_TIMELINE_LIMIT
    ) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_TIMELINE_LIMIT
        timeline = self._timelines.get(run_id)
        if not timeline:
            return []
        start = max(0, len(timeline) - limit)
        out: list[TimelineEvent] = []
        for row in timeline[start:]:
            try:
                out.append(TimelineEvent.from_dict(TimelineEvent.row_to_dict(row)))
            except ValidationError as exc:  # pragma: no cover - cannot happen in memory
                log.warning("run %r: corrupt timeline entry skipped: %s", run_id, exc)
        return out

    def _append(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        if not run_id:
            raise ValidationError("run id required")
        timeline = self._timelines.get(run_id)
        if timeline is None:
            timeline = self._timelines[run_id] = []
        now: str | None = None
        for event in events:
            row = event.to_row()
            if not row[0] or not row[2]:
                if not row[0]:
                    now = now or format_ts(self._now())
                row = (row[0] or now, row[1], row[2] or run_id, *row[3:])
            timeline.append(row)
        if len(timeline) > TIMELINE_CAP:
            del timeline[:len(timeline) - TIMELINE_CAP]

    # ----------------------------------------------------------------------- idempotency

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        """Claim ``key`` for ``run_id`` unless it is already claimed; True if claimed now."""
        await trio.lowlevel.checkpoint()
        if not key or not run_id:
            raise ValidationError("idempotency key and run id required")
        if key in self._idempotency:
            return False
        self._idempotency[key] = run_id
        return True

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._idempotency.get(key)

    async def delete_run_idempotency_key(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._idempotency.pop(key, None)

    # -------------------------------------------------------------------------- helpers

    def _record(self, run_id: str) -> _RunRecord:
        record = self._runs.get(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found")
        return record

    def _assemble_many(self, ids: list[str]) -> list[WorkflowRun]:
        out: list[WorkflowRun] = []
        for rid in ids:
            record = self._runs.get(rid)
            if record is None:
                continue
            try:
                out.append(record.assemble())
            except ValidationError as exc:  # listing skips corrupt entries (SPEC §11)
                log.warning("run %r: corrupt entry skipped: %s", rid, exc)
        return out

    @staticmethod
    def _write_whole(record: _RunRecord, run: WorkflowRun) -> None:
        record.header = run.header_dict()
        record.steps = {sid: _step_dict(sr) for sid, sr in run.steps.items()}
        record.children = {
            sid: {cid: child.to_dict() for cid, child in sr.children.items()}
            for sid, sr in run.steps.items()
            if sr.children
        } or None
        context = run.context
        ctx_steps = context.get("steps")
        if isinstance(ctx_steps, dict):
            record.context_steps = json_copy(ctx_steps)
            record.context_keys = {
                k: json_copy(v) for k, v in context.items() if k != "steps"
            } or None
        else:
            record.context_steps = None
            record.context_keys = json_copy(context) or None

    @staticmethod
    def _write_children(
        record: _RunRecord, run: WorkflowRun, parent: str, kids: list[str]
    ) -> None:
        sr = run.steps.get(parent)
        if sr is None:
            if record.children:
                record.children.pop(parent, None)
            return
        if record.children is None:
            record.children = {}
        stored = record.children.setdefault(parent, {})
        for cid in kids:
            child = sr.children.get(cid)
            if child is None:
                stored.pop(cid, None)
            else:
                stored[cid] = child.to_dict()
        if not stored:
            del record.children[parent]
            if not record.children:
                record.children = None

    @staticmethod
    def _write_context_key(record: _RunRecord, run: WorkflowRun, key: str) -> None:
        present = key in run.context
        value = run.context.get(key)
        if key == "steps" and (isinstance(value, dict) or not present):
            if record.context_keys:
                record.context_keys.pop("steps", None)
            record.context_steps = json_copy(value) if present else None
            return
        if key == "steps":  # a non-map "steps" is stored like any other key
            record.context_steps = None
        if present:
            if record.context_keys is None:
                record.context_keys = {}
            record.context_keys[key] = json_copy(value)
        elif record.context_keys:
            record.context_keys.pop(key, None)

    @staticmethod
    def _write_context_steps(record: _RunRecord, run: WorkflowRun, keys: list[str]) -> None:
        ctx_steps = run.context.get("steps")
        if not isinstance(ctx_steps, dict):
            if record.context_steps is not None:
                for key in keys:
                    record.context_steps.pop(key, None)
            return
        if record.context_steps is None:
            record.context_steps = {}
            if record.context_keys:
                record.context_keys.pop("steps", None)
        for key in keys:
            if key in ctx_steps:
                record.context_steps[key] = json_copy(ctx_steps[key])
            else:
                record.context_steps.pop(key, None)

    @staticmethod
    def _drop(indexes: dict[str, _Index], name: str, run_id: str) -> None:
        index = indexes.get(name)
        if index is not None:
            index.pop(run_id, None)
            if not index:
                del indexes[name]

    def _count_active(self, org_id: str, delta: int) -> None:
        count = self._active_by_org.get(org_id, 0) + delta
        if count > 0:
            self._active_by_org[org_id] = count
        else:
            self._active_by_org.pop(org_id, None)

    def _reindex(self, run_id: str, record: _RunRecord, run: WorkflowRun, *, new: bool) -> None:
        """Bring the run's index entries in line with its header (status, org, times)."""
        status = status_text(record.header.get("status", "pending"))
        org_id = run.org_id
        workflow_id = run.workflow_id
        created = run.created_at.timestamp() if run.created_at else 0.0
        updated = run.updated_at.timestamp() if run.updated_at else created
        seq = next(self._seq)
        if (not new and status == record.status and org_id == record.org_id
                and workflow_id == record.workflow_id and created == record.created):
            # The common case (a step event): only the update time moves.
            key = (updated, seq)  # one tuple shared by both indexes
            self._runs_by_status[status][run_id] = key
            self._runs_all[run_id] = key
            record.updated = updated
            return

        if new or workflow_id != record.workflow_id or created != record.created:
            if not new:
                self._drop(self._runs_by_workflow, record.workflow_id, run_id)
            self._runs_by_workflow.setdefault(workflow_id, {})[run_id] = (created, seq)
        if not new and status != record.status:
            self._drop(self._runs_by_status, record.status, run_id)
        key = (updated, seq)
        self._runs_by_status.setdefault(status, {})[run_id] = key
        self._runs_all[run_id] = key

        if not new and not _is_terminal(record.status):
            self._count_active(record.org_id, -1)
        if not _is_terminal(status):
            self._count_active(org_id, 1)

        record.status = status
        record.org_id = org_id
        record.workflow_id = workflow_id
        record.created = created
        record.updated = updated


__all__ = ["MemoryStore"]
