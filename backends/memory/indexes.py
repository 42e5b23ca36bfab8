"""The listing indexes of ``MemoryStore``: runs by update time, by workflow and by status,
the active-run count per org, and the sort helper the workflow index shares.

An index maps an id to its sort key ``(timestamp, write sequence)``: newest = largest, and a
tie on the timestamp goes to the most recent write (the order SPEC §11 leaves open and the
conformance suite fixes for every backend).
"""

from __future__ import annotations

import heapq
import itertools
from operator import itemgetter

from cordtrio.model import RunStatus
from cordtrio.ports import status_text

from .frozen import H_CREATED, H_ORG, H_STATUS, H_UPDATED, H_WORKFLOW, HeaderSnapshot
from .run_record import RunRecord

Index = dict[str, tuple[float, int]]


# What a run is listed by in its workflow's index: a write that changes either is the one
# that orders the run there (``RunRecord.created_seq``).
workflow_place = itemgetter(H_WORKFLOW, H_CREATED)


def newest(index: Index, limit: int) -> list[str]:
    """Ids of ``index`` newest first, at most ``limit`` (O(n log limit))."""
    return [rid for rid, _ in heapq.nlargest(limit, index.items(), key=lambda kv: kv[1])]


_TERMINAL = frozenset(str(s.value) for s in RunStatus if s.is_terminal)
_STATUS_TEXTS = frozenset(str(s.value) for s in RunStatus)  # ``status_text`` keeps these
_indexed = itemgetter(H_STATUS, H_ORG, H_WORKFLOW, H_CREATED, H_UPDATED)


def is_terminal(status: str) -> bool:
    """True for the stored text of a terminal run status (unknown text: not terminal)."""
    return status in _TERMINAL


def drop(indexes: dict[str, Index], name: str, key: str) -> None:
    """Remove ``key`` from ``indexes[name]``, and that index once it is empty."""
    index = indexes.get(name)
    if index is not None:
        index.pop(key, None)
        if not index:
            del indexes[name]


class RunIndexes:
    """Where each run is listed; ``RunRecord`` remembers what is indexed for its run.

    Kept up to date lazily: a header write only stamps the record with its place in the
    write order and marks it dirty (one dict store, on every engine step); the listings
    and the active-run count bring the dirty runs' entries in line first (``flush``),
    which gives the very entries writing them one by one would have.
    """

    def __init__(self, seq: itertools.count[int]) -> None:
        # the next write's place in the write order (shared with the workflow index: one
        # write order per store)
        self.next_seq = seq.__next__
        self.all: Index = {}
        self.by_workflow: dict[str, Index] = {}
        self.by_status: dict[str, Index] = {}
        # non-terminal runs per org, counted (a set of ids would cost ~70 bytes per run)
        self.active_by_org: dict[str, int] = {}
        self.dirty: dict[str, RunRecord] = {}  # written since the last ``flush``

    def written(self, run_id: str, record: RunRecord, header: HeaderSnapshot,
                new: bool = False) -> None:
        """The run's header is now ``header`` (``new``: the run was just created, with it):
        keep it in ``record``, stamp the write's order and mark the run for the next
        ``flush``. (``MemoryStore.save_run_changes_now`` does the same inline.)"""
        seq = record.seq = self.next_seq()
        if new or workflow_place(record.header) != workflow_place(header):
            record.created_seq = seq  # the workflow listing's tie-break: this write
        record.header = header
        self.dirty[run_id] = record

    def remove(self, run_id: str, record: RunRecord) -> None:
        """Take a deleted run out of every index."""
        self.dirty.pop(run_id, None)
        if not record.indexed:
            return
        self.all.pop(run_id, None)
        drop(self.by_workflow, record.workflow_id, run_id)
        drop(self.by_status, record.status, run_id)
        if not is_terminal(record.status):
            self._count_active(record.org_id, -1)

    def flush(self) -> None:
        """Bring the index entries of every run written since the last flush in line."""
        dirty = self.dirty
        if dirty:
            for run_id, record in dirty.items():
                self._reindex(run_id, record)
            dirty.clear()

    def _count_active(self, org_id: str, delta: int) -> None:
        count = self.active_by_org.get(org_id, 0) + delta
        if count > 0:
            self.active_by_org[org_id] = count
        else:
            self.active_by_org.pop(org_id, None)

    def _reindex(self, run_id: str, record: RunRecord) -> None:
        """The run's index entries from its header (status, org, times, write order)."""
        status, org_id, workflow_id, created_at, updated_at = _indexed(record.header)
        if status.__class__ is not str or status not in _STATUS_TEXTS:  # (most: the text)
            status = status_text(status)
        created = created_at.timestamp() if created_at else 0.0  # the times as unix seconds
        updated = updated_at.timestamp() if updated_at else created
        active = status not in _TERMINAL
        if record.indexed:  # moved: out of the entries it no longer has
            if workflow_id != record.workflow_id:
                drop(self.by_workflow, record.workflow_id, run_id)
            if status != record.status:
                drop(self.by_status, record.status, run_id)
            was_active = record.status not in _TERMINAL
            if was_active is not active or org_id != record.org_id:  # (else: counted)
                if was_active:
                    self._count_active(record.org_id, -1)
                if active:
                    self._count_active(org_id, 1)
        elif active:
            self._count_active(org_id, 1)
        self.by_workflow.setdefault(workflow_id, {})[run_id] = (created, record.created_seq)
        key = (updated, record.seq)  # one tuple shared by both indexes
        self.by_status.setdefault(status, {})[run_id] = key
        self.all[run_id] = key
        record.indexed = True
        record.status = status
        record.org_id = org_id
        record.workflow_id = workflow_id


__all__ = ["Index", "RunIndexes", "drop", "is_terminal", "newest", "workflow_place"]
