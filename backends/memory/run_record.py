"""How ``MemoryStore`` keeps one run: split into parts that are written on their own, each a
private copy.

A run is kept as its header (a ``WorkflowRun`` without steps and context), one ``StepRun`` per
step (without children), one per for-each child, one entry per ``context["steps"]`` key and
one per other top-level context key — so that ``save_run_changes`` costs O(size of the
change) whatever the size of the run.

The parts are immutable snapshots (``frozen``), not documents: taken on every write and
thawed into fresh objects on every read (``assemble``), which gives what a
``to_dict``/``from_dict`` round trip would, without formatting or parsing a timestamp. That is
what keeps callers from aliasing the store: mutating an object you passed in or got back never
changes a stored part, and no stored part is ever handed out.
"""

from __future__ import annotations

from dataclasses import dataclass
from marshal import dumps

from cordtrio.model import StepRun, TimelineEvent, WorkflowRun
from cordtrio.ports import RunChanges, child_order_key

from .frozen import (
    Frozen,
    HeaderSnapshot,
    StepSnapshot,
    freeze,
    freeze_header,
    freeze_step,
    thaw,
    thaw_header,
    thaw_step,
)

# A for-each child is kept like a step; one with children of its own (never written by the
# engine) as a clone, so they are kept too.
ChildSnapshot = StepSnapshot | StepRun


def _freeze_child(child: StepRun, cid: str) -> ChildSnapshot:
    return child.clone(step_id=cid) if child.children else freeze_step(child)


def _thaw_child(snap: ChildSnapshot, cid: str) -> StepRun:
    return snap.clone() if isinstance(snap, StepRun) else thaw_step(snap, cid)


@dataclass(slots=True)
class RunRecord:
    """One run, split so each part can be rewritten on its own (see the module docstring)."""

    header: HeaderSnapshot  # every field but steps, context and input
    input: Frozen | None  # kept once: it never changes after creation (None: empty)
    steps: dict[str, StepSnapshot]
    # The run's timeline as ``Timelines`` keeps it (``Timelines.kept``), given when the store
    # creates the run: its writes append there without a look-up.
    events: list[TimelineEvent]
    # None rather than an empty dict (64 bytes each, per parked run: W4)
    children: dict[str, dict[str, ChildSnapshot]] | None = None
    context_steps: dict[str, Frozen] | None = None  # None: the context has no "steps" map
    context_keys: dict[str, Frozen] | None = None
    # Where the indexes stand (``RunIndexes``): the write order of the latest header write
    # and of the one that set the run's creation time or workflow; what the indexes hold.
    seq: int = 0
    created_seq: int = 0
    indexed: bool = False
    status: str = ""
    org_id: str = ""
    workflow_id: str = ""
    # the token of the write that created the run (``RunChanges.created``; "": another way)
    created_by: str = ""

    @classmethod
    def of(cls, run: WorkflowRun, events: list[TimelineEvent] | None = None) -> RunRecord:
        """A record holding a copy of every part of ``run``, its timeline kept in ``events``
        (``Timelines.kept``; a list of its own if None)."""
        record = cls(freeze_header(run), freeze(run.input) if run.input else None, {},
                     [] if events is None else events)
        if run.steps or run.context:  # a new run has neither: its record is complete
            record.copy_body(run)
        return record

    def assemble(self) -> WorkflowRun:
        """A fresh ``WorkflowRun``: every part copied, nothing shared with the record."""
        run = thaw_header(self.header, self.input)
        children = self.children
        steps: dict[str, StepRun] = {}
        for sid, stored in self.steps.items():
            step = thaw_step(stored, sid)
            kids = children.get(sid) if children else None
            if kids:
                step.children = {cid: _thaw_child(kid, cid) for cid, kid in kids.items()}
            steps[sid] = step
        run.steps = steps
        keys = self.context_keys
        context = {k: thaw(v) for k, v in keys.items()} if keys else {}
        if self.context_steps is not None:
            context["steps"] = {k: thaw(v) for k, v in self.context_steps.items()}
        run.context = context
        return run

    # ----------------------------------------------------------------------------- writes

    def write_whole(self, run: WorkflowRun) -> None:
        """Replace every part but the header (``RunIndexes.written``) with a copy of
        ``run``'s."""
        self.input = freeze(run.input) if run.input else None
        self.copy_body(run)

    def copy_body(self, run: WorkflowRun) -> None:
        """Replace the steps, children and context with copies of ``run``'s."""
        self.steps = {sid: freeze_step(sr) for sid, sr in run.steps.items()}
        self.children = {
            sid: {cid: _freeze_child(child, cid) for cid, child in sr.children.items()}
            for sid, sr in run.steps.items()
            if sr.children
        } or None
        context = run.context
        ctx_steps = context.get("steps")
        if isinstance(ctx_steps, dict):
            self.context_steps = {k: freeze(v) for k, v in ctx_steps.items()}
            self.context_keys = {k: freeze(v) for k, v in context.items() if k != "steps"} or None
        else:
            self.context_steps = None
            self.context_keys = {k: freeze(v) for k, v in context.items()} or None

    def write_changes(self, run: WorkflowRun, changes: RunChanges) -> None:
        """Copy in the parts of ``run`` that ``changes`` names (``save_run_changes``) but the
        header (``RunIndexes.written``); a named part absent from ``run`` is deleted."""
        names = changes.steps
        if names:
            stored = self.steps
            size = len(stored)
            try:  # every step named at once (a C loop), if the run has them all
                snaps = [*map(freeze_step, map(run.steps.__getitem__, names))]
            except KeyError:  # one was removed: step by step
                self._write_steps(run, names)
            else:
                stored.update(zip(names, snaps, strict=True))  # (a rewrite keeps its place)
                if len(stored) > size + 1:
                    self._order_fresh(run.steps, len(stored) - size)
        if changes.children:
            for parent in changes.children:
                self.write_children(run, parent, changes.ordered_children(parent))
        if changes.context_keys:
            # stable orders (not str-hash order): a reloaded run is the same in every process
            keys = changes.context_keys
            for key in [k for k in run.context if k in keys] + sorted(
                    keys.difference(run.context)):
                self.write_context_key(run, key)
        names = changes.context_steps
        if names:
            stored_steps = self.context_steps
            if stored_steps is not None:
                try:  # the common case (one job's output), ``write_context_steps`` inlined
                    ctx_steps = run.context["steps"]
                    if ctx_steps.__class__ is dict:
                        (key,) = names
                        stored_steps[key] = dumps(ctx_steps[key], 2)  # ``freeze`` inlined
                        return
                except (KeyError, ValueError):  # (no such entry, several, or no marshal)
                    pass
            self.write_context_steps(run, sorted(names, key=child_order_key))

    def _write_steps(self, run: WorkflowRun, names: set[str]) -> None:
        """``write_changes`` of the steps ``names``, some of which ``run`` no longer has."""
        stored, steps = self.steps, run.steps
        fresh = 0
        for sid in names:
            sr = steps.get(sid)
            if sr is None:
                stored.pop(sid, None)
                if self.children:
                    self.children.pop(sid, None)
                continue
            if sid not in stored:  # (rewriting a key keeps its place)
                fresh += 1
            stored[sid] = freeze_step(sr)
        if fresh > 1:
            self._order_fresh(steps, fresh)

    def _order_fresh(self, steps: dict[str, StepRun], fresh: int) -> None:
        """Put the ``fresh`` steps just added (the last ones stored, in set order) in the
        run's own order, so a reloaded run lists its steps the same way every time (not in
        str-hash order)."""
        stored = self.steps
        added = set(list(stored)[-fresh:])
        for sid in steps:
            if sid in added:
                stored[sid] = stored.pop(sid)

    def write_children(self, run: WorkflowRun, parent: str, kids: list[str]) -> None:
        sr = run.steps.get(parent)
        if sr is None:
            if self.children:
                self.children.pop(parent, None)
            return
        if self.children is None:
            self.children = {}
        stored = self.children.setdefault(parent, {})
        for cid in kids:
            child = sr.children.get(cid)
            if child is None:
                stored.pop(cid, None)
            else:
                stored[cid] = _freeze_child(child, cid)
        if not stored:
            del self.children[parent]
            if not self.children:
                self.children = None

    def write_context_key(self, run: WorkflowRun, key: str) -> None:
        present = key in run.context
        value = run.context.get(key)
        if key == "steps" and (isinstance(value, dict) or not present):
            if self.context_keys:
                self.context_keys.pop("steps", None)
            self.context_steps = ({k: freeze(v) for k, v in value.items()}
                                  if isinstance(value, dict) else None)
            return
        if key == "steps":  # a non-map "steps" is stored like any other key
            self.context_steps = None
        if present:
            if self.context_keys is None:
                self.context_keys = {}
            self.context_keys[key] = freeze(value)
        elif self.context_keys:
            self.context_keys.pop(key, None)

    def write_context_steps(self, run: WorkflowRun, keys: list[str]) -> None:
        ctx_steps = run.context.get("steps")
        if not isinstance(ctx_steps, dict):
            if self.context_steps is not None:
                for key in keys:
                    self.context_steps.pop(key, None)
            return
        if self.context_steps is None:
            self.context_steps = {}
            if self.context_keys:
                self.context_keys.pop("steps", None)
        for key in keys:
            if key in ctx_steps:
                self.context_steps[key] = freeze(ctx_steps[key])
            else:
                self.context_steps.pop(key, None)


__all__ = ["RunRecord"]
