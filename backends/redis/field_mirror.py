"""The field names of a run's hash as this store last wrote or read them, per run object.

An engine step writes a few fields of the run's hash and gives a field written for the first
time an insertion rank (``ord:<field>``, see ``store.py``). Without knowing which fields the
hash holds, the step script must read them first (an ``HMGET``: does the run exist, which
written fields have a rank). The run task of an engine keeps one ``WorkflowRun`` object
for the life of the run, created (``create_run``) or read (``get_run``) through this store
and written by it alone (fenced by its lease in multi-engine mode): what the store wrote
and read through that object is what the hash holds. ``FieldMirror`` keeps those names per
object (weakly: an entry goes with its object), so the write knows what is new and the
script only checks that the server agrees (``step_write``: the number of fields ``HSET``
added). Where it does not — the run is gone, someone else changed it, a write whose reply
was lost ran after all — the script falls back to reading the ranks, and the mirror of that
object is dropped: the next write reads again (and so does every write of an object the
store has no mirror of, such as a copy).

A run with more than ``MAX_MIRRORED`` field names (a fan-out of tens of thousands of
children) is not mirrored: its writes read the ranks, as they would without a mirror (the
names would cost megabytes per run).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from cordtrio.model import WorkflowRun

MAX_MIRRORED = 65_536


class FieldMirror:
    """Field names per run object, by identity (``WorkflowRun`` compares by value)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[WorkflowRun], set[str]]] = {}

    def get(self, run: WorkflowRun) -> set[str] | None:
        """The names mirrored for this very object, or None."""
        entry = self._entries.get(id(run))
        if entry is None or entry[0]() is not run:
            return None
        return entry[1]

    def put(self, run: WorkflowRun, names: Iterable[str]) -> None:
        """The hash of ``run`` holds exactly ``names`` now (a set is kept as it is: the
        caller hands it over)."""
        known = names if type(names) is set else set(names)
        if len(known) > MAX_MIRRORED:
            self.forget(run)
            return
        key = id(run)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None and entry[0]() is run:
            entries[key] = (entry[0], known)
            return

        def gone(ref: weakref.ref[WorkflowRun]) -> None:
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(run, gone), known)

    def kept(self, run: WorkflowRun, names: set[str]) -> None:
        """A write through ``names`` (``get``'s set, updated in place) succeeded: they are
        what the hash holds, and the entry that holds them stays (unless they grew past
        ``MAX_MIRRORED``). Nothing is put back if the entry went or was replaced meanwhile:
        the next write reads."""
        if len(names) > MAX_MIRRORED:
            self.forget(run)

    def forget(self, run: WorkflowRun) -> None:
        entry = self._entries.get(id(run))
        if entry is not None and entry[0]() is run:
            del self._entries[id(run)]

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["MAX_MIRRORED", "FieldMirror"]
