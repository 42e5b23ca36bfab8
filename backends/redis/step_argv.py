"""``STEP_SCRIPT``'s arguments for an engine step, built straight from the run and its
``RunChanges``: the same list the general way gave (``RunChanges`` → ``FieldOps`` →
``StepArgs`` → argument list; kept as the reference it is tested against, item by item, in
``tests/redis/step_args_reference.py``), without those layers. The commands the script runs
with them are told to a command counter by ``step_write.report_step_commands``.

Each engine step writes the header, a step or two, a context entry, its timeline events, the
index moves and a job input. Going through a dict of writes and sets of deletions, then
sorting them into ranked and unranked fields and collecting the index moves as pipeline
calls, and then the argument list reshaped the same few values three times: a third of
the store's own Python per step. Here each part is put where the script reads it as it is
encoded.

This covers every write that removes nothing by prefix (those read the hash first:
``_save_reading_fields``). Without prefixes, ``FieldOps`` never meets a field written after
it was deleted (the parts' field names differ), so no field is re-created (``fresh``) and
the deletions are the ones ``_change_ops`` makes, in its order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordtrio.model import WorkflowRun
from cordtrio.ports import RunChanges, child_order_key

from .base import TERMINAL_STATUSES, retention_keys
from .keys import CTX, CTX_STEPS_MARKER, CTXSTEP, HEADER, ORD, SAVED, STEP, child_field
from .run_hash import dumps, ordered
from .run_index import index_moves, previous_statuses, run_status_text
from .run_json import header_json, step_json
from .step_write import COUNTS, NO_VALUE

_NONE: tuple[()] = ()
_FLAGS = {True: "k", False: "n"}
"""A ranked field's flag by whether the mirror holds its rank ("k": ranked if it has no
rank; "n": ranked now)."""
_MARKED = {"hm": (HEADER, CTX_STEPS_MARKER), "h": (HEADER,), "m": (CTX_STEPS_MARKER,),
           NO_VALUE: ()}
"""The unranked fields the marks of a write (the last word of its ``shape``) have the script
write."""


def step_argv(run: WorkflowRun, changes: RunChanges, owner: str, token: str,
              known: set[str] | None, ranks: Callable[[int], int], docs: list[bytes],
              retention: int | None, payload_ttl: int | None,
              ) -> tuple[list[Any], bool] | None:
    """The arguments of the step write of ``changes`` (the parts, timeline, index and
    retention moves and payloads) and ``plain`` (every argument a ``str``, ``bytes``,
    ``int`` or ``float``: the adapter skips its type check), or None if it removes parts by
    prefix. ``known``: the mirrored field names (with the header among them, and
    ``changes.header`` set), updated in place to the names the hash holds after the write.
    ``retention``: the
    store's (``_queue_retention``); ``payload_ttl``: the committed payloads' TTL."""
    rid = run.id
    ranked: list[Any] = []  # (field, value) pairs, in write order
    deletes: set[str] | None = None  # a set, as ``FieldOps.deletes``: the same order
    header = header_json(run, ("run {!r}", rid)) if changes.header else None
    steps = run.steps
    changed = changes.steps
    if changed:
        if not changed <= steps.keys():
            return None  # a step removed, with its children: by prefix
        # in the run's order (``ordered``'s, all of them in the run: no call, no lookups)
        for sid in filter(changed.__contains__, steps) if len(changed) > 1 else changed:
            ranked += (STEP + sid, step_json(steps[sid], ("run {!r} step {!r}", rid, sid),
                                             with_children=False))
    if changes.children:
        for parent in changes.children:
            psr = steps.get(parent)
            if psr is None:
                return None
            kids = psr.children
            for cid in changes.ordered_children(parent):
                child = kids.get(cid)
                if child is None:
                    deletes = _add(deletes, child_field(parent, cid))
                else:
                    ranked += (child_field(parent, cid),
                               step_json(child, ("run {!r} step {!r}", rid, cid)))
    context = run.context
    if changes.context_keys:
        for k in ordered(changes.context_keys, context):
            if k == "steps":
                return None  # the whole map goes: by prefix
            if k in context:
                ranked += (CTX + k, dumps(context.get(k), ("run {!r} context.{}", rid, k)))
            else:
                deletes = _add(deletes, CTX + k)
    steps_map = False
    if changes.context_steps:
        ctx_steps = context.get("steps")
        keys = changes.context_steps
        if not isinstance(ctx_steps, dict):
            for sk in keys:
                deletes = _add(deletes, CTXSTEP + sk)
        else:
            steps_map = True
            for sk in sorted(keys, key=child_order_key) if len(keys) > 1 else keys:
                if sk in ctx_steps:
                    ranked += (CTXSTEP + sk, dumps(ctx_steps[sk],
                                                   ("run {!r} context.steps.{}", rid, sk)))
                else:
                    deletes = _add(deletes, CTXSTEP + sk)
    marks = ("hm" if steps_map else "h") if header is not None else ("m" if steps_map
                                                                      else NO_VALUE)
    # ranks: a field is new when the mirror has no rank of it (without one: rank if absent)
    count = len(ranked) >> 1
    if known is None:
        flags = "k" * count
        expected = NO_VALUE
    else:  # in C: "n" for each field whose rank the mirror lacks (the script ranks it)
        names = ranked[::2]
        ords = list(map(ORD.__add__, names))
        flags = "".join(map(_FLAGS.__getitem__, map(known.__contains__, ords)))
        if deletes:
            known.difference_update(deletes, [ORD + f for f in deletes])
        held = len(known)
        known.update(names, ords, _MARKED[marks])  # (the new ranks: the others are there)
        if token:
            known.add(SAVED)
        expected = COUNTS[len(known) - held]
    first = ranks(count) if count else 0
    # the index moves and the plain commands after them
    added: tuple[str, ...] | list[str] = _NONE
    removed: tuple[str, ...] | list[str] = _NONE
    score = NO_VALUE
    commands: list[Any] = []
    if changes.header:
        status = run_status_text(run.status)
        removed, added, stamp, active = index_moves(
            run, status, previous_statuses(changes.previous_status))
        score = repr(stamp)
        if active is not None:
            commands += (3, *active, rid)
        if retention is not None and status in TERMINAL_STATUSES:
            for key in retention_keys(run):
                commands += (3, "EXPIRE", key, retention)
    payloads: list[Any] = []
    plain = True
    ttl = NO_VALUE
    if changes.payloads:
        ttl = NO_VALUE if payload_ttl is None else COUNTS[payload_ttl]
        for key, data in changes.payloads.items():
            if type(data) is not bytes or type(key) is not str:
                plain = False
            payloads += (key, data)
    # (an int's text in an f-string is made in C: no ``COUNTS`` lookup needed)
    shape = (f"{token or NO_VALUE} {count} 0 {len(deletes) if deletes else 0}"
             f" {len(docs)} {len(added)} {len(removed)} {len(payloads) >> 1}"
             f" {expected} {ttl} {score} {first} {flags or NO_VALUE} {marks}")
    return [owner, shape, *ranked, *(_NONE if header is None else (header,)),
            *(deletes or _NONE), *docs, *added, *removed, *payloads, *commands], plain


def _add(deletes: set[str] | None, field: str) -> set[str]:
    if deletes is None:
        deletes = set()
    deletes.add(field)
    return deletes


__all__ = ["step_argv"]
