"""In-memory implementation of the store port (SPEC §11), for tests and the embedded CLI.

Everything is kept as private copies: workflows parsed once and handed out with ``clone``;
runs split into parts (``run_record.RunRecord``: header, steps, children, context entries, so
``save_run_changes`` costs O(size of the change)), each an immutable snapshot (``frozen``:
a flat tuple whose immutable fields are kept as they are and whose mutable values are frozen)
taken on write and thawed into fresh objects on read; timeline events as private objects
(``timelines``: the engine's own, handed over by ``save_run_changes_now``, kept as they are).
Every value that crosses the API is a copy: mutating an object you passed in or got back
never changes the store. The listing indexes are in ``indexes`` (brought up to date when a listing
reads them, not on every write), leases and command inboxes in ``leases``.

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
* ``save_run_changes`` with ``RunChanges.created`` creates the run (all of it, whatever the
  parts named, with its timeline and, fenced, its lease) or raises ``InvalidStateError``
  if it exists — unless that very write (its token) created it: then it does nothing.
* ``create_run`` of a run with an ``idempotency_key`` also claims that key (set-if-absent);
  ``delete_run`` releases the key if it still points at the deleted run.
* Timeline appends do not require the run to exist; an event without ``run_id`` gets the one
  it is appended to, one without ``time`` gets the clock's now.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

import trio

from cordtrio.clock import SystemClock
from cordtrio.errors import InvalidStateError, LeaseLostError, NotFoundError, ValidationError
from cordtrio.model import (
    TimelineEvent,
    Workflow,
    WorkflowRun,
)
from cordtrio.ports import (
    DEFAULT_RUN_LIMIT,
    DEFAULT_STATUS_LIMIT,
    DEFAULT_TIMELINE_LIMIT,
    DEFAULT_WORKFLOW_LIMIT,
    Clock,
    CountsDeletions,
    CreatesRunsOnWrite,
    RunChanges,
    status_text,
)
from cordtrio.validation import validate_workflow

from .frozen import freeze_header, header_idempotency_key
from .indexes import Index, RunIndexes, drop, newest, workflow_place
from .leases import LeaseBook, MemoryRunLeases
from .run_record import RunRecord
from .timelines import Timelines, private


class MemoryStore(MemoryRunLeases, CreatesRunsOnWrite, CountsDeletions):
    """Workflows, runs (with their indexes), timelines and idempotency keys, in memory; and
    run leases with command inboxes (``RunLeases``, see ``leases.py``) for several engines.

    Every method is a cancellation point (it raises ``Cancelled`` in a cancelled scope) but
    not a schedule point, and runs to completion without yielding, so each call is atomic
    with respect to other tasks: a dict update need not give up the CPU, and an engine
    step does several. ``clock`` (an object with ``now()`` returning
    an aware UTC datetime) stamps the timestamps the store fills in.
    """

    writes_now = True
    """``save_run_changes_now`` may be called instead of awaiting ``save_run_changes``
    (``ports.WritesNow``): a single engine then skips a coroutine and a cancellation check
    per step. False in a subclass that overrides either (to count, stall or fail writes:
    those go through the method it overrides)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "save_run_changes" in cls.__dict__ or "save_run_changes_now" in cls.__dict__:
            cls.writes_now = False

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._seq = itertools.count()
        # from_dict(to_dict()) of each saved workflow, handed out cloned
        self._workflows: dict[str, Workflow] = {}
        self._wf_all: Index = {}
        self._wf_by_org: dict[str, Index] = {}
        self._runs: dict[str, RunRecord] = {}
        self._index = RunIndexes(self._seq)
        self._timelines = Timelines(self._now)
        self._idempotency: dict[str, str] = {}
        self._lease_book = LeaseBook()

    def _now(self) -> datetime:
        return self._clock.now()

    # ------------------------------------------------------------------------ workflows

    async def save_workflow(self, wf: Workflow) -> None:
        """Validate (SPEC §1) and upsert ``wf``; sets ``created_at`` on the first save and
        ``updated_at`` on every save, on the stored copy and on ``wf``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_workflow(wf)
        if not wf.id:
            raise ValidationError("workflow id required")
        now = self._now()
        old = self._workflows.get(wf.id)
        created = old.created_at if old is not None else None
        wf.created_at = created or wf.created_at or now
        wf.updated_at = now
        # what a document store would keep: the round trip normalises (UTC times, enums)
        parsed = Workflow.from_dict(wf.to_dict(), strict=False)
        if old is not None:
            self._unindex_workflow(wf.id, old.org_id)
        self._workflows[wf.id] = parsed
        key = (now.timestamp(), next(self._seq))
        self._wf_all[wf.id] = key
        if wf.org_id:
            self._wf_by_org.setdefault(wf.org_id, {})[wf.id] = key

    async def get_workflow(self, workflow_id: str) -> Workflow:
        await trio.lowlevel.checkpoint_if_cancelled()
        parsed = self._workflows.get(workflow_id)
        if parsed is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        return parsed.clone()

    async def get_workflow_shared(self, workflow_id: str) -> Workflow:
        """The stored definition itself, not a copy (``ports.SharedWorkflows``): the caller
        must not change it. A save stores a new object, so a lent one never changes."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parsed = self._workflows.get(workflow_id)
        if parsed is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        return parsed

    async def delete_workflow(self, workflow_id: str) -> None:
        """Remove the definition and its index entries (its runs are kept)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parsed = self._workflows.pop(workflow_id, None)
        if parsed is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        self._unindex_workflow(workflow_id, parsed.org_id)

    async def list_workflows(
        self, org_id: str = "", limit: int = DEFAULT_WORKFLOW_LIMIT
    ) -> list[Workflow]:
        """Workflows of ``org_id`` (all workflows when empty), most recently saved first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = limit if limit > 0 else DEFAULT_WORKFLOW_LIMIT
        index = self._wf_by_org.get(org_id, {}) if org_id else self._wf_all
        workflows = self._workflows
        return [workflows[wid].clone() for wid in newest(index, limit) if wid in workflows]

    # ------------------------------------------------------------------------------ runs

    async def create_run(self, run: WorkflowRun) -> None:
        """Store a new run and index it. Raises ``InvalidStateError`` if the id exists."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._insert(run)

    def _insert(self, run: WorkflowRun) -> RunRecord:
        """``create_run`` after its checkpoint: the new run's record, stored and indexed."""
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
        record = RunRecord.of(run, self._timelines.kept(run.id))
        self._runs[run.id] = record
        self._index.written(run.id, record, record.header, True)
        if run.idempotency_key:
            self._idempotency.setdefault(run.idempotency_key, run.id)
        return record

    async def create_run_leased(self, run: WorkflowRun, owner: str, ttl: float) -> bool:
        """``create_run`` and, with no checkpoint between, ``owner`` takes the run's lease
        (``ports.LeasedRunCreate``); False when another owner held it (created anyway)."""
        await self.create_run(run)
        return self._take_lease(run.id, owner, ttl)

    def _create_changed(self, run: WorkflowRun, changes: RunChanges,
                        timeline: Sequence[TimelineEvent]) -> None:
        """``save_run_changes`` of a write that creates the run (``changes.created``): all
        of it, with its timeline and (``lease_owner``) its lease, or nothing. The run
        created by an earlier try of this very write (its token): nothing more to do."""
        token = changes.created
        owner = changes.lease_owner
        existing = self._runs.get(run.id)
        if existing is not None:
            if existing.created_by == token:
                return
            raise InvalidStateError(f"run {run.id!r} already exists")
        if owner is not None:
            holder = self._lease_book.holder(run.id)
            if holder is not None and holder != owner:
                raise LeaseLostError(f"run {run.id}: lease held by {holder}, not {owner}; "
                                     "not created")
        record = self._insert(run)
        record.created_by = token
        if timeline:
            self._timelines.add(record.events, timeline)
        if owner is not None:
            self._take_lease(run.id, owner, changes.lease_ttl)

    def _take_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """``owner`` takes the run's lease for ``ttl`` s (False: another owner holds it)."""
        book = self._lease_book
        holder = book.holder(run_id)
        if holder is not None and holder != owner:
            return False
        book.leases[run_id] = (owner, trio.current_time() + ttl)
        return True

    async def update_run(self, run: WorkflowRun) -> None:
        """Overwrite every part of an existing run and move its index entries."""
        await trio.lowlevel.checkpoint_if_cancelled()
        record = self._record(run.id)
        if run.updated_at is None:
            run.updated_at = self._now()
        self._index.written(run.id, record, freeze_header(run))
        record.write_whole(run)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        """Write only the parts of ``run`` named in ``changes`` (see ``RunChanges``), and
        append ``timeline`` — all in one atomic step.

        A named part that is absent from ``run`` is deleted from the store. Naming
        ``"steps"`` in ``context_keys`` rewrites the whole ``context["steps"]`` map. Indexes
        move only when ``changes.header`` is set.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self.save_run_changes_now(run, changes, [private(e) for e in timeline])

    def save_run_changes_now(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        """``save_run_changes``, not awaited (no cancellation check), the ``timeline`` events
        handed over to the store, which keeps them as they are (``ports.WritesNow``)."""
        if changes.created:
            self._create_changed(run, changes, timeline)
            return
        if changes.lease_owner is not None:
            self._check_fence(run.id, changes.lease_owner)
        try:  # ``_record`` inlined: one write per engine step
            record = self._runs[run.id]
        except KeyError:
            raise NotFoundError(f"run {run.id!r} not found") from None
        if changes.header:
            if run.updated_at is None:
                run.updated_at = self._now()
            # the input never changes after creation: the stored copy is kept (O(1) updates)
            header = freeze_header(run)
            index = self._index  # ``index.written(run.id, record, header)``, inlined:
            seq = record.seq = index.next_seq()
            if workflow_place(record.header) != workflow_place(header):
                record.created_seq = seq
            record.header = header
            index.dirty[run.id] = record
        record.write_changes(run, changes)
        if timeline:
            self._timelines.add(record.events, timeline)
        if changes.release_lease and changes.lease_owner is not None:
            self._release(run.id, changes.lease_owner)  # (fenced: held until now)

    async def get_run(self, run_id: str) -> WorkflowRun:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._record(run_id).assemble()

    async def missing_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Those of ``run_ids`` that are not stored (``ports.RunPresence``)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        return [*itertools.filterfalse(self._runs.__contains__, run_ids)]

    async def delete_run(self, run_id: str) -> None:
        """Remove the run from every index, with its timeline and its idempotency key."""
        with self.deleting():  # (counted: ``ports.CountsDeletions``)
            await trio.lowlevel.checkpoint_if_cancelled()
            record = self._record(run_id)
            del self._runs[run_id]
            self._index.remove(run_id, record)
            self._timelines.drop(run_id)
            key = header_idempotency_key(record.header)
            if key and self._idempotency.get(key) == run_id:
                del self._idempotency[key]

    async def count_active_runs(self, org_id: str) -> int:
        """Number of non-terminal runs of ``org_id``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._index.flush()
        return self._index.active_by_org.get(org_id, 0)

    async def list_runs_by_workflow(
        self, workflow_id: str, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """Runs of a workflow, most recently created first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        self._index.flush()
        ids = newest(self._index.by_workflow.get(workflow_id, {}), limit)
        return self._assemble_many(ids)

    async def list_runs(
        self, cursor_unix: int = 0, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """All runs, most recently updated first; with ``cursor_unix > 0`` only those updated
        strictly before that unix time (pass the last page's oldest ``updated_at``)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        self._index.flush()
        index = self._index.all
        if cursor_unix > 0:
            index = {rid: key for rid, key in index.items() if key[0] < cursor_unix}
        return self._assemble_many(newest(index, limit))

    async def list_run_ids_by_status(
        self, status: str, limit: int = DEFAULT_STATUS_LIMIT
    ) -> list[str]:
        """Ids of runs currently in ``status``, most recently updated first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = limit if limit > 0 else DEFAULT_STATUS_LIMIT
        self._index.flush()
        return newest(self._index.by_status.get(status_text(status), {}), limit)

    # -------------------------------------------------------------------------- timeline

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._timelines.append(run_id, (private(event),))

    async def append_timeline_events(
        self, run_id: str, events: Sequence[TimelineEvent]
    ) -> None:
        """Append a batch in order (one call for all the events of one transition)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._timelines.append(run_id, [private(e) for e in events])

    async def list_timeline_events(
        self, run_id: str, limit: int = DEFAULT_TIMELINE_LIMIT
    ) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = limit if limit > 0 else DEFAULT_TIMELINE_LIMIT
        return self._timelines.newest(run_id, limit)

    # ----------------------------------------------------------------------- idempotency

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        """Claim ``key`` for ``run_id`` unless it is already claimed; True if claimed now."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not key or not run_id:
            raise ValidationError("idempotency key and run id required")
        if key in self._idempotency:
            return False
        self._idempotency[key] = run_id
        return True

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._idempotency.get(key)

    async def delete_run_idempotency_key(self, key: str) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._idempotency.pop(key, None)

    # -------------------------------------------------------------------------- helpers

    def _record(self, run_id: str) -> RunRecord:
        record = self._runs.get(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found")
        return record

    def _assemble_many(self, ids: list[str]) -> list[WorkflowRun]:
        runs = self._runs
        return [runs[rid].assemble() for rid in ids if rid in runs]

    def _unindex_workflow(self, workflow_id: str, org_id: str) -> None:
        self._wf_all.pop(workflow_id, None)
        drop(self._wf_by_org, org_id, workflow_id)


__all__ = ["MemoryStore"]
