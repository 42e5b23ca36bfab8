"""Redis implementation of the store port (SPEC §11), with the original's key layout.

Keys (``<x>`` is an id; every value is UTF-8 JSON unless said otherwise):

===============================  ==========  ==================================================
``wf:def:<id>``                  string      the workflow (``Workflow.to_dict()``)
``wf:index:all``                 zset        workflow ids, score = last save (unix s)
``wf:index:org:<org>``           zset        the same per org (workflows with an org only)
``wf:run:<id>``                  hash        the run, split in fields (below)
``wf:runs:<workflow>``           zset        run ids of a workflow, score = ``created_at``
``wf:runs:all``                  zset        every run id, score = ``updated_at``
``wf:runs:status:<status>``      zset        run ids in that status, score = ``updated_at``;
                                             a run is in exactly one of them
``wf:runs:active:<org>``         set         non-terminal run ids of the org
``wf:run:timeline:<id>``         list        timeline events, oldest first, LTRIM-ed to 1000
``wf:run:idempotency:<key>``     string      run id (``SET NX``)
===============================  ==========  ==================================================

**Deviation from the original: a run is a hash, not one JSON document.** The original stored
``wf:run:<id>`` as a single JSON string and rewrote it whole on every event, so one fan-out
child result cost O(number of children) bytes on the wire and in the server. Here each part
of the run is a field of the hash, and ``save_run_changes`` (the engine's hot path) rewrites
only the fields an event changed — O(1) whatever the size of the run:

* ``header`` — ``run.header_dict(with_input=False)`` (status, timestamps, output, error...);
* ``input`` — the run input, written by ``create_run``/``update_run`` only (it never changes);
* ``step:<step>`` — one ``StepRun.to_dict(with_children=False)`` per step;
* ``child:<parent>:<child>`` — one ``StepRun.to_dict()`` per for-each child (``%`` and ``:``
  in the parent id are percent-escaped so the field splits unambiguously);
* ``ctx:<key>`` — one per top-level context key other than a map ``steps``;
  ``ctx:steps`` = ``{}`` marks that ``context["steps"]`` is a map, whose entries are
* ``ctxstep:<key>`` — one per ``context["steps"]`` entry (a step's or child's output);
* ``ord:<field>`` — the insertion rank of the field above, so that steps, children and
  context keys read back in the order they were added, as Python dicts (and the memory
  store) keep them. Small hashes keep insertion order in Redis but large ones do not, so the
  order is stored: a new field gets a fresh rank (a nanosecond-clock based counter), an
  existing one keeps its rank (``HSETNX``), a deleted one loses it. ``header``, ``input``
  and the ``ctx:steps`` map marker have no rank (a map ``steps`` always comes last).

Payloads (``ctx:<job>``/``res:<job>``) are in ``payloads.py``, schemas (``schema:<id>``,
``schema:index``) in ``schemas.py``.

``get_run`` is one ``HGETALL`` plus reassembly. ``save_run_changes`` is one ``MULTI``/``EXEC``
with no read before it: a single ``HSET`` of the changed fields, an ``HSETNX`` per changed
field for its rank, an ``HDEL`` for removed parts, and — when the header changed — the index
moves: ``ZADD`` to the status zset and ``wf:runs:all`` (new ``updated_at`` score); when the
status changed, ``ZREM`` from the previous status zset and ``SADD``/``SREM`` of the org's
active set. The previous status is ``changes.previous_status`` (the engine always sets it);
without it the run is removed from every other status zset. Its first command,
``HEXISTS <run> header``, tells whether the run existed; if not, what the transaction wrote
is removed again and ``NotFoundError`` is raised. Measured on a real server, a fan-out child
result is 8 commands in one round trip (MULTI, HEXISTS, HSET, 2 HSETNX, 2 ZADD, EXEC) for
100 or 5,000 children alike. Only removing a whole step (which drops its children) or
rewriting the whole ``context["steps"]`` map needs the field names first: that rare path
reads them with ``HKEYS`` under ``WATCH``. ``save_run_changes`` never moves a run to another
workflow or org (the engine never changes those); ``update_run`` does.

``create_run`` is one Lua script (``EXISTS``, then the writes — one round trip, batched by
the adapter with other calls); ``update_run``, ``delete_run``, ``save_workflow`` and
``delete_workflow`` are optimistic transactions (``WATCH``, read what the index moves need,
``MULTI``/``EXEC``).

Behaviour matches ``cordtrio.backends.memory.MemoryStore`` (see its docstring; the same
conformance suite runs on both) with these differences:

* Ties in a sorted index (equal timestamps) are ordered by id (Redis orders equal scores
  lexicographically), not by the most recent write.
* Ids that would make two SPEC keys collide are refused with ``ValidationError``: a workflow
  id ``all`` or starting with ``status:``/``active:`` (``wf:runs:<workflow>`` would be
  ``wf:runs:all``...), a run id starting with ``timeline:``/``idempotency:``.
* Corrupt data (bad JSON, a key of the wrong type) raises ``RedisDataError`` naming the key
  from ``get_*``; listings skip such entries and log a warning. ``RedisDataError`` is a
  ``CordtrioError`` but not a ``StoreError``: the engine does not retry it (retrying cannot
  fix it); connection trouble is a ``StoreError``, which it does retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cordtrio.clock import SystemClock
from cordtrio.errors import InvalidStateError, LeaseLostError, NotFoundError, ValidationError
from cordtrio.model import RunStatus, StepRun, TimelineEvent, Workflow, WorkflowRun
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

from .adapter import RedisAdapter, RedisDataError
from .keys import (
    CTX_STEPS_MARKER,
    CTXSTEP,
    EMPTY_MAP,
    HEADER,
    INPUT,
    ORD,
    RUNS_ALL,
    WF_INDEX_ALL,
    active_runs_key,
    child_field,
    child_prefix,
    ctx_field,
    ctxstep_field,
    idempotency_key,
    run_key,
    runs_by_status_key,
    runs_by_workflow_key,
    step_field,
    timeline_key,
    workflow_key,
    workflow_org_index,
)
from .leases import RedisRunLeases, commands_if_absent, fenced_commands, lease_key
from .run_hash import FieldOps, assemble, dumps, loads, ordered, text

log = logging.getLogger(__name__)


RUN_STATUSES = tuple(s.value for s in RunStatus)

# ------------------------------------------------------------------------- helpers


def _is_terminal(status: str) -> bool:
    try:
        return RunStatus(status).is_terminal
    except ValueError:
        return False


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _check_workflow_id(workflow_id: str) -> None:
    if workflow_id == "all" or workflow_id.startswith(("status:", "active:")):
        raise ValidationError(
            f"workflow {workflow_id!r}: id not allowed with the Redis store "
            f"(key wf:runs:{workflow_id} is taken by another index)"
        )


def _check_run_id(run_id: str) -> None:
    if run_id.startswith(("timeline:", "idempotency:")):
        raise ValidationError(
            f"run {run_id!r}: id not allowed with the Redis store "
            f"(key wf:run:{run_id} is taken by another record)"
        )


# --------------------------------------------------------------------------- store


class RedisStore(RedisRunLeases):
    """Workflows, runs (with their indexes), timelines and idempotency keys in Redis; and
    run leases with command inboxes (``RunLeases``, see ``leases.py``) for several engines.

    Built by ``cordtrio.backends.redis.connect``; ``clock`` (``now()`` → aware UTC datetime)
    stamps the timestamps the store fills in, as in ``MemoryStore``.
    """

    def __init__(self, redis: RedisAdapter, *, clock: Clock | None = None) -> None:
        self._redis = redis
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._last_rank = 0

    def _now(self) -> datetime:
        return self._clock.now()

    def _rank(self) -> bytes:
        """A fresh insertion rank: increasing within this process, and across processes as
        far as their wall clocks agree (nanoseconds since the epoch)."""
        self._last_rank = max(self._last_rank + 1, time.time_ns())
        return str(self._last_rank).encode()

    # ------------------------------------------------------------------------ workflows

    async def save_workflow(self, wf: Workflow) -> None:
        """Validate (SPEC §1) and upsert ``wf``; sets ``created_at`` on the first save and
        ``updated_at`` on every save, on the stored copy and on ``wf``."""
        validate_workflow(wf)
        if not wf.id:
            raise ValidationError("workflow id required")
        _check_workflow_id(wf.id)
        key = workflow_key(wf.id)
        now = self._now()
        stamped: dict[str, datetime | None] = {}

        async def txn(pipe: Any) -> None:
            old_raw = await pipe.get(key)
            old_created: datetime | None = None
            old_org = ""
            if old_raw is not None:
                try:
                    old = loads(old_raw, key)
                    old_org = str(old.get("org_id") or "")
                    old_created = parse_ts(old.get("created_at"))
                except (RedisDataError, AttributeError, ValueError) as exc:
                    log.warning("workflow %r: overwriting a corrupt entry: %s", wf.id, exc)
            created = old_created or wf.created_at or now
            doc = wf.to_dict()
            doc["created_at"] = format_ts(created)
            doc["updated_at"] = format_ts(now)
            score = now.timestamp()
            pipe.multi()
            pipe.set(key, dumps(doc, f"workflow {wf.id!r}"))
            if old_org and old_org != wf.org_id:
                pipe.zrem(workflow_org_index(old_org), wf.id)
            pipe.zadd(WF_INDEX_ALL, {wf.id: score})
            if wf.org_id:
                pipe.zadd(workflow_org_index(wf.org_id), {wf.id: score})
            await pipe.execute()
            stamped["created"] = created

        await self._redis.transaction("save workflow", key, [key], txn)
        wf.created_at = stamped["created"]
        wf.updated_at = now

    async def get_workflow(self, workflow_id: str) -> Workflow:
        key = workflow_key(workflow_id)
        raw = await self._redis.call("get workflow", key, "get", key)
        if raw is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        return self._workflow(key, raw)

    async def delete_workflow(self, workflow_id: str) -> None:
        """Remove the definition and its index entries (its runs are kept)."""
        key = workflow_key(workflow_id)

        async def txn(pipe: Any) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFoundError(f"workflow {workflow_id!r} not found")
            org_id = ""
            try:
                org_id = str(loads(raw, key).get("org_id") or "")
            except (RedisDataError, AttributeError) as exc:
                log.warning("workflow %r: deleting a corrupt entry: %s", workflow_id, exc)
            pipe.multi()
            pipe.delete(key)
            pipe.zrem(WF_INDEX_ALL, workflow_id)
            if org_id:
                pipe.zrem(workflow_org_index(org_id), workflow_id)
            await pipe.execute()

        await self._redis.transaction("delete workflow", key, [key], txn)

    async def list_workflows(
        self, org_id: str = "", limit: int = DEFAULT_WORKFLOW_LIMIT
    ) -> list[Workflow]:
        """Workflows of ``org_id`` (all workflows when empty), most recently saved first."""
        limit = limit if limit > 0 else DEFAULT_WORKFLOW_LIMIT
        index = workflow_org_index(org_id) if org_id else WF_INDEX_ALL
        ids = [text(x) for x in
               await self._redis.call("list workflows", index, "zrevrange", index, 0, limit - 1)]
        if not ids:
            return []
        keys = [workflow_key(wid) for wid in ids]
        raws = await self._redis.call("list workflows", index, "mget", keys)
        out: list[Workflow] = []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                out.append(self._workflow(key, raw))
            except RedisDataError as exc:  # listing skips corrupt entries (SPEC §11)
                log.warning("corrupt workflow skipped: %s", exc)
        return out

    @staticmethod
    def _workflow(key: str, raw: bytes) -> Workflow:
        doc = loads(raw, key)
        try:
            return Workflow.from_dict(doc)
        except ValidationError as exc:
            raise RedisDataError(f"redis key {key!r}: corrupt workflow: {exc}") from None

    # ------------------------------------------------------------------------------ runs

    async def create_run(self, run: WorkflowRun) -> None:
        """Store a new run and index it. Raises ``InvalidStateError`` if the id exists."""
        if not run.id:
            raise ValidationError("run id required")
        if not run.workflow_id:
            raise ValidationError(f"run {run.id!r}: workflow id required")
        _check_run_id(run.id)
        _check_workflow_id(run.workflow_id)
        if run.created_at is None:
            run.created_at = self._now()
        if run.updated_at is None:
            run.updated_at = run.created_at
        key = run_key(run.id)
        fields = self._whole_run(run)
        status = status_text(run.status)

        def queue(pipe: Any) -> None:
            pipe.hset(key, mapping=fields)
            pipe.zadd(runs_by_workflow_key(run.workflow_id), {run.id: _ts(run.created_at)})
            self._queue_index(pipe, run, status, previous=())
            if run.idempotency_key:
                pipe.set(idempotency_key(run.idempotency_key), run.id, nx=True)

        # One script (EXISTS, then the writes), not WATCH + MULTI/EXEC: one round trip that
        # the adapter can batch with other calls, with the same all-or-nothing outcome.
        if not await commands_if_absent(self._redis, "create run", key, queue):
            raise InvalidStateError(f"run {run.id!r} already exists")

    async def update_run(self, run: WorkflowRun) -> None:
        """Overwrite every part of an existing run and move its index entries."""
        key = run_key(run.id)
        if run.updated_at is None:
            run.updated_at = self._now()
        _check_workflow_id(run.workflow_id)
        fields = self._whole_run(run)
        status = status_text(run.status)

        async def txn(pipe: Any) -> None:
            old = await self._old_header(pipe, key, run.id)
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            old_wf = str(old.get("workflow_id") or "") if old is not None else ""
            old_created = old.get("created_at") if old is not None else None
            if old is None or old_wf != run.workflow_id or (
                    _parse_or_none(old_created) != run.created_at):
                if old_wf:
                    pipe.zrem(runs_by_workflow_key(old_wf), run.id)
                pipe.zadd(runs_by_workflow_key(run.workflow_id), {run.id: _ts(run.created_at)})
            if old is not None:
                previous: Sequence[str] = (status_text(old.get("status") or "pending"),)
                old_org = str(old.get("org_id") or "")
                if old_org != run.org_id:
                    pipe.srem(active_runs_key(old_org), run.id)
            else:  # a corrupt header: the old status is unknown
                previous = RUN_STATUSES
            self._queue_index(pipe, run, status, previous=previous, sync_active=True)
            await pipe.execute()

        await self._redis.transaction("update run", key, [key], txn)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        """Write only the parts of ``run`` named in ``changes`` (see ``RunChanges`` and the
        module docstring) and append ``timeline``: one ``MULTI``/``EXEC``, no read. A named
        part that is absent from ``run`` is deleted. Indexes move only when
        ``changes.header`` is set."""
        docs = self._timeline_docs(run.id, timeline)
        if changes.lease_owner is not None:
            await self._save_fenced(run, changes, docs, changes.lease_owner)
            return
        if not changes:
            # Nothing to write, but a missing run is still an error.
            key = run_key(run.id)
            if not await self._redis.call("save run changes", key, "exists", key):
                raise NotFoundError(f"run {run.id!r} not found")
            return
        if changes.header and run.updated_at is None:
            run.updated_at = self._now()
        ops = self._change_ops(run, changes)
        key = run_key(run.id)
        status = status_text(run.status)
        if changes.header:
            prev = changes.previous_status
            previous: Sequence[str] = (
                RUN_STATUSES if prev is None else (status_text(prev),)
            )
        else:
            previous = ()

        if ops.prefixes:  # the rare path: removing a step's children / all context steps
            async def txn(pipe: Any) -> None:
                stored = [text(f) for f in await pipe.hkeys(key)]
                if HEADER not in stored:
                    if stored:
                        raise RedisDataError(f"redis key {key!r}: run has no header field")
                    raise NotFoundError(f"run {run.id!r} not found")
                ops.resolve(stored)
                pipe.multi()
                self._queue_ops(pipe, key, ops)
                if changes.header:
                    self._queue_index(pipe, run, status, previous=previous)
                self._queue_timeline(pipe, run.id, docs)
                await pipe.execute()

            await self._redis.transaction("save run changes", key, [key], txn)
            return

        def commands(pipe: Any) -> None:
            pipe.hexists(key, HEADER)
            self._queue_ops(pipe, key, ops)
            if changes.header:
                self._queue_index(pipe, run, status, previous=previous)
            self._queue_timeline(pipe, run.id, docs)

        replies = await self._redis.pipeline("save run changes", key, commands)
        if not replies[0]:
            await self._undo_phantom(run, status if changes.header else None)
            raise NotFoundError(f"run {run.id!r} not found")

    async def _save_fenced(
        self, run: WorkflowRun, changes: RunChanges, docs: list[bytes], owner: str
    ) -> None:
        """``save_run_changes`` fenced by the run's lease (``changes.lease_owner``).

        The usual commands (HEXISTS, the field writes, the index moves, the timeline) are
        queued as always, then sent as the arguments of one Lua script that first checks
        the lease and runs them only if ``owner`` holds it: one round trip, like the
        unfenced write. The rare ``HKEYS`` path is a ``WATCH`` transaction on the run and the
        lease with a ``GET`` of the lease before ``MULTI``."""
        key = run_key(run.id)
        lease = lease_key(run.id)
        if changes and changes.header and run.updated_at is None:
            run.updated_at = self._now()
        ops = self._change_ops(run, changes) if changes else None
        status = status_text(run.status)
        previous: Sequence[str] = ()
        if changes.header:
            prev = changes.previous_status
            previous = RUN_STATUSES if prev is None else (status_text(prev),)

        def lost(holder: Any) -> LeaseLostError:
            shown = text(holder) if holder else "nobody"
            return LeaseLostError(f"run {run.id}: lease held by {shown}, not {owner}; "
                                  "not written")

        def queue(pipe: Any) -> None:
            pipe.hexists(key, HEADER)
            if ops is not None:
                self._queue_ops(pipe, key, ops)
                if changes.header:
                    self._queue_index(pipe, run, status, previous=previous)
            self._queue_timeline(pipe, run.id, docs)

        if ops is not None and ops.prefixes:
            async def txn(pipe: Any) -> bool:
                holder = await pipe.get(lease)
                if holder is None or text(holder) != owner:
                    raise lost(holder)
                stored = [text(f) for f in await pipe.hkeys(key)]
                if HEADER not in stored:
                    if stored:
                        raise RedisDataError(f"redis key {key!r}: run has no header field")
                    raise NotFoundError(f"run {run.id!r} not found")
                ops.resolve(stored)
                pipe.multi()
                queue(pipe)
                return bool((await pipe.execute())[0])

            existed = await self._redis.transaction("save run changes", key, [lease, key], txn)
        else:
            ok, first = await fenced_commands(self._redis, "save run changes", key, lease,
                                              owner, queue)
            if not ok:
                raise lost(first)
            existed = bool(first)
        if not existed:
            if ops is not None:
                await self._undo_phantom(run, status if changes.header else None)
            raise NotFoundError(f"run {run.id!r} not found")

    async def _undo_phantom(self, run: WorkflowRun, status: str | None) -> None:
        """``save_run_changes`` wrote to a run that did not exist: remove what it wrote
        (unless the run was created in the meantime)."""
        key = run_key(run.id)

        async def txn(pipe: Any) -> None:
            # Created in the meantime? create_run always writes "input"; we never do.
            if await pipe.hexists(key, INPUT):
                return
            pipe.multi()
            pipe.delete(key)
            if status is not None:
                pipe.zrem(runs_by_status_key(status), run.id)
                pipe.zrem(RUNS_ALL, run.id)
                pipe.srem(active_runs_key(run.org_id), run.id)
            await pipe.execute()

        await self._redis.transaction("save run changes (undo)", key, [key], txn)

    async def get_run(self, run_id: str) -> WorkflowRun:
        key = run_key(run_id)
        fields = await self._redis.call("get run", key, "hgetall", key)
        if not fields:
            raise NotFoundError(f"run {run_id!r} not found")
        return assemble(key, fields)

    async def delete_run(self, run_id: str) -> None:
        """Remove the run from every index, with its timeline and its idempotency key."""
        key = run_key(run_id)

        async def txn(pipe: Any) -> None:
            old = await self._old_header(pipe, key, run_id)
            idem = str(old.get("idempotency_key") or "") if old is not None else ""
            release = False
            if idem:
                await pipe.watch(idempotency_key(idem))
                holder = await pipe.get(idempotency_key(idem))
                release = holder is not None and text(holder) == run_id
            pipe.multi()
            pipe.delete(key, timeline_key(run_id))
            pipe.zrem(RUNS_ALL, run_id)
            if old is not None:
                pipe.zrem(runs_by_workflow_key(str(old.get("workflow_id") or "")), run_id)
                pipe.zrem(runs_by_status_key(status_text(old.get("status") or "pending")),
                          run_id)
                pipe.srem(active_runs_key(str(old.get("org_id") or "")), run_id)
            else:  # corrupt header: at least leave no status entry behind
                for s in RUN_STATUSES:
                    pipe.zrem(runs_by_status_key(s), run_id)
            if release:
                pipe.delete(idempotency_key(idem))
            await pipe.execute()

        await self._redis.transaction("delete run", key, [key], txn)

    async def count_active_runs(self, org_id: str) -> int:
        """Number of non-terminal runs of ``org_id``."""
        key = active_runs_key(org_id)
        return int(await self._redis.call("count active runs", key, "scard", key))

    async def list_runs_by_workflow(
        self, workflow_id: str, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """Runs of a workflow, most recently created first."""
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        index = runs_by_workflow_key(workflow_id)
        ids = await self._redis.call("list runs", index, "zrevrange", index, 0, limit - 1)
        return await self._runs([text(x) for x in ids])

    async def list_runs(
        self, cursor_unix: int = 0, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[WorkflowRun]:
        """All runs, most recently updated first; with ``cursor_unix > 0`` only those updated
        strictly before that unix time (pass the last page's oldest ``updated_at``)."""
        limit = limit if limit > 0 else DEFAULT_RUN_LIMIT
        top = f"({cursor_unix}" if cursor_unix > 0 else "+inf"
        ids = await self._redis.call(
            "list runs", RUNS_ALL, "zrevrangebyscore", RUNS_ALL, top, "-inf",
            start=0, num=limit,
        )
        return await self._runs([text(x) for x in ids])

    async def list_run_ids_by_status(
        self, status: str, limit: int = DEFAULT_STATUS_LIMIT
    ) -> list[str]:
        """Ids of runs currently in ``status``, most recently updated first."""
        limit = limit if limit > 0 else DEFAULT_STATUS_LIMIT
        index = runs_by_status_key(status_text(status))
        ids = await self._redis.call("list runs by status", index, "zrevrange", index, 0,
                                     limit - 1)
        return [text(x) for x in ids]

    async def _runs(self, ids: list[str]) -> list[WorkflowRun]:
        """The runs with these ids, in order, skipping missing and corrupt ones."""
        if not ids:
            return []
        keys = [run_key(rid) for rid in ids]
        replies = await self._redis.pipeline(
            "list runs", keys[0], [("hgetall", (k,)) for k in keys],
            transaction=False, raise_on_error=False,
        )
        out: list[WorkflowRun] = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                if not isinstance(reply, RedisDataError):
                    raise reply
                log.warning("corrupt run skipped: %s", reply)
                continue
            if not reply:
                continue  # deleted between the index read and now
            try:
                out.append(assemble(key, reply))
            except RedisDataError as exc:  # listing skips corrupt entries (SPEC §11)
                log.warning("corrupt run skipped: %s", exc)
        return out

    # -------------------------------------------------------------------------- timeline

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await self.append_timeline_events(run_id, (event,))

    async def append_timeline_events(
        self, run_id: str, events: Sequence[TimelineEvent]
    ) -> None:
        """Append a batch in order: ``RPUSH`` + ``LTRIM`` in one round trip."""
        docs = self._timeline_docs(run_id, events)
        if not docs:
            return
        key = timeline_key(run_id)
        await self._redis.pipeline(
            "append timeline", key,
            [("rpush", (key, *docs)), ("ltrim", (key, -TIMELINE_CAP, -1))],
            transaction=False,
        )

    @staticmethod
    def _queue_timeline(pipe: Any, run_id: str, docs: list[bytes]) -> None:
        if docs:
            key = timeline_key(run_id)
            pipe.rpush(key, *docs)
            pipe.ltrim(key, -TIMELINE_CAP, -1)

    def _timeline_docs(self, run_id: str, events: Sequence[TimelineEvent]) -> list[bytes]:
        if not run_id:
            raise ValidationError("run id required")
        now: str | None = None
        docs: list[bytes] = []
        for event in events:
            doc = event.to_dict()
            if not doc.get("time"):
                now = now or format_ts(self._now())
                doc["time"] = now
            if not doc.get("run_id"):
                doc["run_id"] = run_id
            docs.append(dumps(doc, f"run {run_id!r}: timeline event"))
        return docs

    async def list_timeline_events(
        self, run_id: str, limit: int = DEFAULT_TIMELINE_LIMIT
    ) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        limit = limit if limit > 0 else DEFAULT_TIMELINE_LIMIT
        key = timeline_key(run_id)
        raws = await self._redis.call("list timeline", key, "lrange", key, -limit, -1)
        out: list[TimelineEvent] = []
        for raw in raws:
            try:
                out.append(TimelineEvent.from_dict(loads(raw, key)))
            except (RedisDataError, ValidationError) as exc:
                log.warning("run %r: corrupt timeline entry skipped: %s", run_id, exc)
        return out

    # ----------------------------------------------------------------------- idempotency

    async def try_set_run_idempotency_key(self, key: str, run_id: str) -> bool:
        """Claim ``key`` for ``run_id`` unless it is already claimed; True if claimed now."""
        if not key or not run_id:
            raise ValidationError("idempotency key and run id required")
        rkey = idempotency_key(key)
        return bool(await self._redis.call("claim idempotency key", rkey, "set", rkey, run_id,
                                           nx=True))

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        rkey = idempotency_key(key)
        raw = await self._redis.call("get idempotency key", rkey, "get", rkey)
        return None if raw is None else text(raw)

    async def delete_run_idempotency_key(self, key: str) -> None:
        rkey = idempotency_key(key)
        await self._redis.call("delete idempotency key", rkey, "delete", rkey)

    # -------------------------------------------------------------------------- helpers

    @staticmethod
    async def _old_header(pipe: Any, key: str, run_id: str) -> dict[str, Any] | None:
        """The stored header (immediate mode, under WATCH); None if it is corrupt.
        Raises ``NotFoundError`` if the run does not exist."""
        raw = await pipe.hget(key, HEADER)
        if raw is None:
            if not await pipe.exists(key):
                raise NotFoundError(f"run {run_id!r} not found")
            log.warning("run %r: stored run has no header", run_id)
            return None
        try:
            old = loads(raw, key, HEADER)
        except RedisDataError as exc:
            log.warning("run %r: %s", run_id, exc)
            return None
        return old if isinstance(old, dict) else None

    @staticmethod
    def _queue_index(
        pipe: Any, run: WorkflowRun, status: str, *, previous: Iterable[str],
        sync_active: bool = False,
    ) -> None:
        """Queue the moves of the status, global and active-set indexes. ``previous``: the
        status zsets the run may be in now. The active set is left alone when the status
        stays the same, unless ``sync_active``."""
        updated = _ts(run.updated_at) or _ts(run.created_at)
        moved = False
        for old in previous:
            if old != status:
                pipe.zrem(runs_by_status_key(old), run.id)
                moved = True
        pipe.zadd(runs_by_status_key(status), {run.id: updated})
        pipe.zadd(RUNS_ALL, {run.id: updated})
        if not moved and previous and not sync_active:
            return  # same status as before (and the org never changes here): set unchanged
        if _is_terminal(status):
            pipe.srem(active_runs_key(run.org_id), run.id)
        else:
            pipe.sadd(active_runs_key(run.org_id), run.id)

    def _queue_ops(self, pipe: Any, key: str, ops: FieldOps) -> None:
        """Queue the hash writes: one HSET (values, and ranks of re-created fields), an
        HSETNX per other written field (its rank, if new), one HDEL."""
        if ops.deletes:
            pipe.hdel(key, *ops.deletes, *(ORD + f for f in ops.deletes))
        if ops.writes:
            mapping: dict[str, bytes] = dict(ops.writes)
            keep_rank: list[tuple[str, bytes]] = []
            for field, value in ops.writes.items():  # ranks in write order
                if field in (HEADER, INPUT) or (
                        field == CTX_STEPS_MARKER and value == EMPTY_MAP):
                    continue  # unranked: a map "steps" always comes last
                if field in ops.fresh:
                    mapping[ORD + field] = self._rank()
                else:
                    keep_rank.append((ORD + field, self._rank()))
            pipe.hset(key, mapping=mapping)
            for ord_field, rank in keep_rank:
                pipe.hsetnx(key, ord_field, rank)

    def _whole_run(self, run: WorkflowRun) -> dict[str, bytes]:
        """Every field of the run's hash (``create_run``/``update_run``)."""
        where = f"run {run.id!r}"
        fields: dict[str, bytes] = {
            HEADER: dumps(run.header_dict(with_input=False), where),
            INPUT: dumps(run.input, f"{where}.input"),
        }

        def put(field: str, value: bytes) -> None:
            fields[field] = value
            if field != CTX_STEPS_MARKER or value != EMPTY_MAP:
                fields[ORD + field] = self._rank()

        for sid, sr in run.steps.items():
            put(step_field(sid), dumps(sr.to_dict(with_children=False), f"{where} step {sid!r}"))
            for cid, child in sr.children.items():
                put(child_field(sid, cid), dumps(child.to_dict(), f"{where} step {cid!r}"))
        for k, v in run.context.items():
            if k == "steps" and isinstance(v, dict):
                put(CTX_STEPS_MARKER, EMPTY_MAP)
                for sk, sv in v.items():
                    put(ctxstep_field(sk), dumps(sv, f"{where} context.steps.{sk}"))
            else:
                put(ctx_field(k), dumps(v, f"{where} context.{k}"))
        return fields

    @staticmethod
    def _change_ops(run: WorkflowRun, changes: RunChanges) -> FieldOps:
        """The hash writes for ``changes``, in the order ``MemoryStore`` applies them."""
        where = f"run {run.id!r}"
        ops = FieldOps()
        if changes.header:
            ops.put(HEADER, dumps(run.header_dict(with_input=False), where))
        for sid in ordered(changes.steps, run.steps):
            sr = run.steps.get(sid)
            if sr is None:
                ops.drop(step_field(sid))
                ops.drop_prefix(child_prefix(sid))
            else:
                ops.put(step_field(sid),
                        dumps(sr.to_dict(with_children=False), f"{where} step {sid!r}"))
        for parent in changes.children:
            psr: StepRun | None = run.steps.get(parent)
            if psr is None:
                ops.drop_prefix(child_prefix(parent))
                continue
            for cid in changes.ordered_children(parent):
                child = psr.children.get(cid)
                if child is None:
                    ops.drop(child_field(parent, cid))
                else:
                    ops.put(child_field(parent, cid),
                            dumps(child.to_dict(), f"{where} step {cid!r}"))
        context = run.context
        for k in ordered(changes.context_keys, context):
            present = k in context
            value = context.get(k)
            if k == "steps":
                ops.drop_prefix(CTXSTEP)
                if not present:
                    ops.drop(CTX_STEPS_MARKER)
                elif isinstance(value, dict):
                    ops.drop(CTX_STEPS_MARKER)  # re-created: a new rank
                    ops.put(CTX_STEPS_MARKER, EMPTY_MAP)
                    for sk, sv in value.items():
                        ops.put(ctxstep_field(sk), dumps(sv, f"{where} context.steps.{sk}"))
                else:
                    ops.drop(CTX_STEPS_MARKER)
                    ops.put(CTX_STEPS_MARKER, dumps(value, f"{where} context.steps"))
            elif present:
                ops.put(ctx_field(k), dumps(value, f"{where} context.{k}"))
            else:
                ops.drop(ctx_field(k))
        if changes.context_steps:
            ctx_steps = context.get("steps")
            if not isinstance(ctx_steps, dict):
                for sk in changes.context_steps:
                    ops.drop(ctxstep_field(sk))
            else:
                if CTX_STEPS_MARKER not in ops.writes:
                    ops.put(CTX_STEPS_MARKER, EMPTY_MAP)
                for sk in sorted(changes.context_steps, key=child_order_key):
                    if sk in ctx_steps:
                        ops.put(ctxstep_field(sk),
                                dumps(ctx_steps[sk], f"{where} context.steps.{sk}"))
                    else:
                        ops.drop(ctxstep_field(sk))
        return ops


def _parse_or_none(value: Any) -> datetime | None:
    try:
        return parse_ts(value)
    except ValueError:
        return None


__all__ = [
    "TIMELINE_CAP",
    "RedisStore",
    "active_runs_key",
    "idempotency_key",
    "run_key",
    "runs_by_status_key",
    "runs_by_workflow_key",
    "timeline_key",
    "workflow_key",
    "workflow_org_index",
]
