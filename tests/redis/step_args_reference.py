"""The step write's arguments the general way (``RunChanges`` → ``FieldOps`` →
``StepArgs`` → argument list): how the store built them before ``step_argv``, kept here as
the reference ``step_argv`` is tested against, item by item."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cordtrio.backends.redis.keys import CTX_STEPS_MARKER, EMPTY_MAP, HEADER, INPUT, ORD, SAVED
from cordtrio.backends.redis.run_changes import RedisRunChanges
from cordtrio.backends.redis.run_hash import FieldOps
from cordtrio.backends.redis.run_index import RUN_STATUSES, run_status_text
from cordtrio.backends.redis.step_write import COUNTS, NO_VALUE
from cordtrio.model import WorkflowRun
from cordtrio.ports import RunChanges

_UNRANKED = frozenset((HEADER, INPUT, CTX_STEPS_MARKER, SAVED))


def general_argv(store: RedisRunChanges, run: WorkflowRun, changes: RunChanges, ops: FieldOps,
                 owner: str | None, token: str, known: set[str] | None, key: str,
                 docs: list[bytes],
                 report: Callable[[tuple[Any, ...]], None] | None = None,
                 ) -> tuple[list[Any], bool]:
    """``step_argv``'s result built through ``FieldOps`` and ``StepArgs``; ``report`` hears
    the commands the script will run (as ``report_step_commands`` tells them)."""
    args = StepArgs(owner or "", report, token, run.id)
    args.fields(ops, store._ranks, known)
    args.timeline(docs)
    if changes.header:
        status = run_status_text(run.status)
        prev = changes.previous_status
        store._queue_index(args, run, status, previous=RUN_STATUSES if prev is None
                           else (run_status_text(prev),))
        store._queue_retention(args, run, status)
    if changes.payloads:
        args.payloads(changes.payloads, store._committed_ttl())
    return args.argv(key), args.plain


class StepArgs:
    """Collects ``STEP_SCRIPT``'s arguments; doubles as the pipeline ``_queue_index`` and
    ``_queue_retention`` queue their commands on (the index moves of the run become the
    script's index sections, the rest plain commands at the end). ``on_command`` (the
    adapter's, for ``testing.CommandCounter``) hears every command the script will run,
    but the conditional ``LTRIM``."""

    def __init__(self, owner: str, on_command: Callable[[tuple[Any, ...]], None] | None,
                 token: str = "", run_id: str = "") -> None:
        self._owner = owner
        self._token = token  # written as the ``SAVED`` field by the script
        self._run_id = run_id  # the only member of the index moves
        self._on_command = on_command
        self._ranked: list[Any] = []  # (field, value) pairs of ranked fields, in order
        self._flags = ""  # per ranked field: "n" ranked now, "k" ranked if it has no rank
        self._first_rank = 0  # the first ranked field's rank; the others follow it
        self._header: bytes | None = None  # its value (the script adds its name)
        self._steps_map = False  # the map marker written (the script writes it)
        self._values: list[Any] = []  # (field, value) pairs of other unranked fields
        self._deletes: list[str] = []
        self._timeline: list[bytes] = []
        self._added_to: list[str] = []
        self._removed_from: list[str] = []
        self._score: float | None = None
        self._payloads: list[Any] = []
        self._ttl: int | None = None
        self._tail: list[Any] = []
        self._expected: int | None = None
        self.after: set[str] | None = None
        """With ``known`` field names: the names the hash holds once the script wrote."""
        self.plain = True
        """Every argument is a ``str``, ``bytes``, ``int`` or ``float`` (``script``'s
        ``plain``): all are built here but the payloads a step dispatches, checked then."""

    def fields(self, ops: FieldOps, ranks: Callable[[int], int],
               known: set[str] | None = None) -> None:
        """The hash writes of ``ops``: values; each ranked field, in write order, the next
        of consecutive ranks (``ranks(count)`` gives the first) — written for a field
        written anew, written if absent for any other; deletions (the script drops their
        ranks). With ``known`` (the field names the hash holds, ``field_mirror``), a field
        is new when it has no rank among them, and the script reads nothing: it checks
        that ``HSET`` added as many fields as that predicts."""
        ranked, values = self._ranked, self._values
        fresh = ops.fresh
        flags = ""
        new_ranks: list[str] = []
        for field, value in ops.writes.items():
            if field in _UNRANKED and (field != CTX_STEPS_MARKER or value == EMPTY_MAP):
                # unranked: a map "steps" always comes last
                if field == HEADER:
                    self._header = value
                elif field == CTX_STEPS_MARKER:
                    self._steps_map = True
                else:
                    values += (field, value)
                continue
            ranked += (field, value)
            ord_field = ORD + field
            if (known is not None and ord_field not in known) or field in fresh:
                flags += "n"
                new_ranks.append(ord_field)
            else:
                flags += "k"
        if flags:
            self._flags = flags
            self._first_rank = ranks(len(flags))
        deletes = ops.deletes
        if deletes:
            self._deletes += deletes
        if known is not None:
            after = known  # the mirror's own set, updated in place: a failed write drops it
            if deletes:
                after.difference_update(deletes, [ORD + f for f in deletes])
            held = len(after)
            after.update(values[::2])
            if self._header is not None:
                after.add(HEADER)
            if self._steps_map:
                after.add(CTX_STEPS_MARKER)
            if ranked:
                after.update(ranked[::2])
                after.update(new_ranks)
            if self._token:
                after.add(SAVED)
            self._expected = len(after) - held  # the written names the hash lacked
            self.after = after

    def timeline(self, docs: list[bytes]) -> None:
        self._timeline = docs

    def payloads(self, payloads: Mapping[str, bytes], ttl: int | None) -> None:
        self._ttl = ttl
        report = self._on_command
        for key, data in payloads.items():
            if type(data) is not bytes or type(key) is not str:
                self.plain = False  # the adapter checks every argument (``script``)
            self._payloads += (key, data)
            if report is not None:
                report(("SET", key, data) if ttl is None else ("SET", key, data, "EX", ttl))

    # the pipeline methods the index and retention moves use
    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        """Add the run to the index ``name`` with the write's score (one per write)."""
        for member, score in mapping.items():
            if member != self._run_id or (self._score is not None and score != self._score):
                raise ValueError("a step write adds its own run to indexes, with one score")
            self._score = score
            self._added_to.append(name)
            if self._on_command is not None:
                self._on_command(("ZADD", name, score, member))

    def zrem(self, name: str, *members: str) -> None:
        """Remove the run from the index ``name``."""
        if members != (self._run_id,):
            raise ValueError("a step write removes its own run from indexes")
        self._removed_from.append(name)
        if self._on_command is not None:
            self._on_command(("ZREM", name, *members))

    def sadd(self, name: str, *members: str) -> None:
        self._command("SADD", name, *members)

    def srem(self, name: str, *members: str) -> None:
        self._command("SREM", name, *members)

    def expire(self, name: str, seconds: int) -> None:
        self._command("EXPIRE", name, seconds)

    def _command(self, *args: Any) -> None:
        self._tail += (len(args), *args)
        if self._on_command is not None:
            self._on_command(args)

    def argv(self, run_key: str) -> list[Any]:
        """The script's arguments (after the commands above were queued)."""
        report = self._on_command
        if report is not None:
            self._report(report, run_key)
        ranked, values, deletes, timeline = (
            self._ranked, self._values, self._deletes, self._timeline)
        added_to, removed_from, payloads = self._added_to, self._removed_from, self._payloads
        n, expected, ttl, score = COUNTS, self._expected, self._ttl, self._score
        header = self._header
        shape = (f"{self._token or NO_VALUE} {n[len(ranked) >> 1]} {n[len(values) >> 1]}"
                 f" {n[len(deletes)]} {n[len(timeline)]}"
                 f" {n[len(added_to)]} {n[len(removed_from)]} {n[len(payloads) >> 1]}"
                 f" {NO_VALUE if expected is None else n[expected]}"
                 f" {NO_VALUE if ttl is None else n[ttl]}"
                 f" {NO_VALUE if score is None else repr(score)}"
                 f" {self._first_rank} {self._flags or NO_VALUE}"
                 f" {_MARKS[header is not None, self._steps_map]}")
        return [self._owner, shape, *ranked, *(() if header is None else (header,)), *values,
                *deletes, *timeline, *added_to, *removed_from, *payloads, *self._tail]

    def _report(self, report: Callable[[tuple[Any, ...]], None], run_key: str) -> None:
        """The commands the script runs before the plain ones (those were reported as
        they were queued; the order of the counts does not matter)."""
        if self._owner:
            report(("GET", "lease"))
        if self._token:
            report(("HGET", run_key, SAVED))
        if self._expected is None:  # else the script reads nothing (unless it must resync)
            report(("HMGET", run_key, HEADER))
        if self._deletes:
            report(("HDEL", run_key, *self._deletes))
        if self._values or self._ranked or self._token or self._header or self._steps_map:
            report(("HSET", run_key, *self._ranked, *self._values))
        if self._timeline:
            report(("RPUSH", "timeline", *self._timeline))


_MARKS = {(False, False): NO_VALUE, (True, False): "h", (False, True): "m", (True, True): "hm"}
"""The ``shape``'s last word: the header written ("h", its value alone, before the other
unranked fields), the ``context["steps"]`` map marker written ("m", no argument)."""


