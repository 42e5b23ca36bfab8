"""The listing indexes of ``MemoryStore``: runs by update time, by workflow and by status,
the active-run count per org, and the sort helper the workflow index shares.

An index maps an id to its sort key ``(timestamp, write sequence)``: newest = largest, and a
tie on the timestamp goes to the most recent write (the order SPEC §11 leaves open and the
conformance suite fixes for every backend).
"""

from __future__ import annotations

import heapq
import itertools

from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.ports import status_text

from .run_record import RunRecord

Index = dict[str, tuple[float, int]]


def newest(index: Index, limit: int) -> list[str]:
    """Ids of ``index`` newest first, at most ``limit`` (O(n log limit))."""
    return [rid for rid, _ in heapq.nlargest(limit, index.items(), key=lambda kv: kv[1])]


_TERMINAL = frozenset(str(s.value) for s in RunStatus if s.is_terminal)


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
    """Where each run is listed; ``RunRecord`` remembers what is indexed for its run."""

    def __init__(self, seq: itertools.count[int]) -> None:
        self._seq = seq  # shared with the workflow index: one write order per store
        self.all: Index = {}
        self.by_workflow: dict[str, Index] = {}
        self.by_status: dict[str, Index] = {}
        # non-terminal runs per org, counted (a set of ids would cost ~70 bytes per run)
        self.active_by_org: dict[str, int] = {}

    def remove(self, run_id: str, record: RunRecord) -> None:
        """Take a deleted run out of every index."""
        self.all.pop(run_id, None)
        drop(self.by_workflow, record.workflow_id, run_id)
        drop(self.by_status, record.status, run_id)
        if not is_terminal(record.status):
            self._count_active(record.org_id, -1)

    def _count_active(self, org_id: str, delta: int) -> None:
        count = self.active_by_org.get(org_id, 0) + delta
        if count > 0:
            self.active_by_org[org_id] = count
        else:
            self.active_by_org.pop(org_id, None)

    def reindex(self, run_id: str, record: RunRecord, run: WorkflowRun, *, new: bool) -> None:
        """Bring the run's index entries in line with its header (status, org, times), just
        written from ``run``."""
        status = status_text(run.status)  # what the record's header now holds
        org_id = run.org_id
        workflow_id = run.workflow_id
        created_at, updated_at = run.created_at, run.updated_at
        created = created_at.timestamp() if created_at else 0.0
        updated = updated_at.timestamp() if updated_at else created
        seq = next(self._seq)
        if (not new and status == record.status and org_id == record.org_id
                and workflow_id == record.workflow_id and created == record.created):
            # The common case (a step event): only the update time moves.
            key = (updated, seq)  # one tuple shared by both indexes
            self.by_status[status][run_id] = key
            self.all[run_id] = key
            record.updated = updated
            return

        if new or workflow_id != record.workflow_id or created != record.created:
            if not new:
                drop(self.by_workflow, record.workflow_id, run_id)
            self.by_workflow.setdefault(workflow_id, {})[run_id] = (created, seq)
        if not new and status != record.status:
            drop(self.by_status, record.status, run_id)
        key = (updated, seq)
        self.by_status.setdefault(status, {})[run_id] = key
        self.all[run_id] = key

        if not new and not is_terminal(record.status):
            self._count_active(record.org_id, -1)
        if not is_terminal(status):
            self._count_active(org_id, 1)

        record.status = status
        record.org_id = org_id
        record.workflow_id = workflow_id
        record.created = created
        record.updated = updated


__all__ = ["Index", "RunIndexes", "drop", "is_terminal", "newest"]
