"""Whole-run writes and reads in Redis: ``create_run``, ``update_run``, ``get_run``,
``delete_run`` and the encoding of a whole run into its hash fields (layout in ``store.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from itertools import chain
from typing import Any

from cordtrio.errors import InvalidStateError, LeaseLostError, NotFoundError, ValidationError
from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.ports import TIMELINE_CAP, CountsDeletions, status_text
from cordtrio.timeutil import format_ts, parse_ts

from .keys import (
    CTX_STEPS_MARKER,
    EMPTY_MAP,
    HEADER,
    INPUT,
    ORD,
    RUNS_ALL,
    SAVED,
    active_runs_key,
    child_field,
    ctx_field,
    ctxstep_field,
    idempotency_key,
    run_key,
    runs_by_status_key,
    runs_by_workflow_key,
    step_field,
    timeline_key,
)
from .leases import CREATED, NOT_LEASED, commands_if_absent, lease_key
from .redis_errors import RedisDataError
from .run_hash import assemble, assemble_named, dumps, field_names, loads, text
from .run_index import RUN_STATUSES, RedisRunIndex, ts_score
from .run_json import header_json, step_json
from .workflows import check_workflow_id

log = logging.getLogger(__name__)


def _check_run_id(run_id: str) -> None:
    if run_id.startswith(("timeline:", "idempotency:")):
        raise ValidationError(
            f"run {run_id!r}: id not allowed with the Redis store "
            f"(key wf:run:{run_id} is taken by another record)"
        )



CORRUPT_RUN_PREFIX = "wf:corrupt:run:"
CORRUPT_FIELD = "corrupt:"


def _readable_header(key: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    raw = fields.get(HEADER)
    if raw is None:
        return None
    try:
        header = loads(raw, key, HEADER)
    except RedisDataError:
        return None
    return header if isinstance(header, dict) else None


def _unreadable(key: str, field: str, raw: Any) -> bool:
    """A run-hash field (other than the header) that ``assemble`` would refuse."""
    if field.startswith((ORD, CORRUPT_FIELD)):
        return False
    try:
        value = loads(raw, key, field)
    except RedisDataError:
        return True
    return field.startswith(("step:", "child:")) and not isinstance(value, dict)


async def _active_sets(pipe: Any) -> list[str]:
    """Every org's active-run set (``SCAN``): a run whose org is unknown is removed from
    all of them."""
    found: list[str] = []
    cursor: Any = 0
    while True:
        cursor, keys = await pipe.scan(cursor, match=active_runs_key("*"), count=1000)
        found += [text(k) for k in keys]
        if not int(cursor):
            return found


def _parse_or_none(value: Any) -> datetime | None:
    try:
        return parse_ts(value)
    except ValueError:
        return None


class RedisRuns(RedisRunIndex, CountsDeletions):
    """Mixin of ``RedisStore``: create, overwrite, read and delete whole runs."""

    async def create_run(self, run: WorkflowRun) -> None:
        """Store a new run and index it. Raises ``InvalidStateError`` if the id exists."""
        await self._create(run, None)

    async def create_run_leased(self, run: WorkflowRun, owner: str, ttl: float) -> bool:
        """``create_run``, and ``owner`` takes the run's lease in the same script
        (``ports.LeasedRunCreate``); False when another owner held it (created anyway)."""
        return await self._create(run, (lease_key(run.id), owner, ttl)) == CREATED

    async def _create(self, run: WorkflowRun, lease: tuple[str, str, float] | None, *,
                      token: str = "", docs: Sequence[bytes] = (),
                      then: Sequence[tuple[Any, ...]] = ()) -> int:
        """The create script (``commands_if_absent``): the whole run, its index entries
        (its workflow's, its status's: previous, none) and its retention, taking ``lease``
        with it. A creating write (``save_run_changes``, ``RunChanges.created``) adds its
        ``token`` (the hash's ``saved`` field, which a step write's replaces), its timeline
        ``docs`` and the commands ``then`` (its job inputs), and needs the lease: none
        taken, nothing is written (``LeaseLostError``)."""
        if not run.id:
            raise ValidationError("run id required")
        if not run.workflow_id:
            raise ValidationError(f"run {run.id!r}: workflow id required")
        _check_run_id(run.id)
        check_workflow_id(run.workflow_id)
        if run.created_at is None:
            run.created_at = self._now()
        if run.updated_at is None:
            run.updated_at = run.created_at
        rid = run.id
        key = run_key(rid)
        fields = self._whole_run(run)
        if token:
            fields[SAVED] = token.encode()
        status = status_text(run.status)
        commands: list[tuple[Any, ...]] = [
            ("HSET", key, *chain.from_iterable(fields.items())),
            ("ZADD", runs_by_workflow_key(run.workflow_id), ts_score(run.created_at), rid),
            *self._index_commands(run, status, previous=()),
        ]
        if run.idempotency_key:
            commands.append(("SET", idempotency_key(run.idempotency_key), rid, "NX"))
        if docs:  # (before the retention, which expires the timeline too)
            # a new run's timeline: the newest ``TIMELINE_CAP`` events are all it keeps
            commands.append(("RPUSH", timeline_key(rid), *docs[-TIMELINE_CAP:]))
        commands += self._retention_commands(run, status)
        commands += then
        # One script (EXISTS, then the writes), not WATCH + MULTI/EXEC: one round trip that
        # the adapter can batch with other calls, with the same all-or-nothing outcome.
        done = await commands_if_absent(self._redis, "create run", key, commands, lease,
                                        token=token, lease_required=bool(token))
        if not done:
            raise InvalidStateError(f"run {run.id!r} already exists")
        if done == NOT_LEASED:
            assert lease is not None
            raise LeaseLostError(f"run {run.id}: lease held by another owner, not "
                                 f"{lease[1]}; not created")
        self._mirror.put(run, fields)
        return done

    async def update_run(self, run: WorkflowRun) -> None:
        """Overwrite every part of an existing run and move its index entries."""
        key = run_key(run.id)
        if run.updated_at is None:
            run.updated_at = self._now()
        check_workflow_id(run.workflow_id)
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
                pipe.zadd(runs_by_workflow_key(run.workflow_id),
                          {run.id: ts_score(run.created_at)})
            if old is not None:
                previous: tuple[str, ...] = (status_text(old.get("status") or "pending"),)
                old_org = str(old.get("org_id") or "")
                if old_org != run.org_id:
                    pipe.srem(active_runs_key(old_org), run.id)
            else:  # a corrupt header: the old status is unknown
                previous = RUN_STATUSES
            self._queue_index(pipe, run, status, previous=previous, sync_active=True)
            self._queue_retention(pipe, run, status)
            await pipe.execute()

        self._mirror.forget(run)
        await self._redis.transaction("update run", key, [key], txn)
        self._mirror.put(run, fields)


    async def get_run(self, run_id: str) -> WorkflowRun:
        key = run_key(run_id)
        raw = await self._redis.call("get run", key, "hgetall", key)
        if not raw:
            raise NotFoundError(f"run {run_id!r} not found")
        fields = field_names(raw)
        run = assemble_named(key, fields)
        self._mirror.put(run, fields)
        return run

    async def missing_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Those of ``run_ids`` whose run key is gone (``ports.RunPresence``): one
        pipelined ``EXISTS`` per id, one round trip."""
        if not run_ids:
            return []
        if len(run_ids) == 1:  # a waiter's check of one ended run: one batched command,
            run_id = run_ids[0]  # without the pipeline's lists (the same reply or error)
            key = run_key(run_id)
            found = await self._redis.call_plain("check runs exist", key, "exists", (key,), {})
            return [] if found else [run_id]
        keys = [run_key(rid) for rid in run_ids]
        replies = await self._redis.pipeline(
            "check runs exist", keys[0], [("exists", (k,)) for k in keys], transaction=False)
        return [rid for rid, n in zip(run_ids, replies, strict=True) if not n]

    async def fail_unreadable_run(self, run_id: str, reason: str) -> str:
        """Mark a run whose stored data cannot be read ``failed``, with ``reason`` as its
        error (``ports.RunRepair``), so it leaves the running/waiting indexes for good.
        Returns what was done, for the log.

        Fields that do not parse are set aside in the hash as ``corrupt:<field>`` (read by
        nobody, kept for inspection) and the header is rewritten as failed. A run without a
        readable header, or whose key is not a hash, is moved whole to
        ``wf:corrupt:run:<id>`` and replaced by a failed run naming that key. Raises
        ``NotFoundError`` if nothing is stored under the run's key."""
        key = run_key(run_id)
        aside = CORRUPT_RUN_PREFIX + run_id
        active_sets: list[str] | None = None  # every org's set, when the org is unknown

        async def txn(pipe: Any) -> str:
            nonlocal active_sets
            kind = text(await pipe.type(key))
            if kind == "none":
                raise NotFoundError(f"run {run_id!r} not found")
            fields: dict[str, Any] = {}
            header: dict[str, Any] | None = None
            if kind == "hash":
                fields = {text(k): v for k, v in (await pipe.hgetall(key)).items()}
                header = _readable_header(key, fields)
            bad: list[str] = []
            if header is not None:
                bad = [f for f, v in fields.items() if f != HEADER and _unreadable(key, f, v)]
                kept = {f: v for f, v in fields.items() if f not in bad}
                try:
                    assemble(key, kept)
                except (RedisDataError, ValueError, TypeError):
                    header = None  # still not a run: set it all aside
            if header is None and active_sets is None:
                active_sets = await _active_sets(pipe)
            now = self._now()
            pipe.multi()
            if header is None:
                pipe.rename(key, aside)
                stub = WorkflowRun(id=run_id, created_at=now)
                header = stub.header_dict(with_input=False)
                pipe.hset(key, mapping={INPUT: EMPTY_MAP})
                done = f"its data was moved to {aside!r}"
            else:
                for f in bad:
                    pipe.hset(key, CORRUPT_FIELD + f, fields[f])
                    pipe.hdel(key, f, ORD + f)
                done = ("unreadable field(s) " + ", ".join(repr(f) for f in bad) +
                        " set aside as 'corrupt:<field>'") if bad else "header rewritten"
            message = f"{reason}; run marked failed, {done}"
            header.update(status=RunStatus.FAILED.value, error={"message": message},
                          completed_at=format_ts(now), updated_at=format_ts(now))
            pipe.hset(key, HEADER, dumps(header, f"run {run_id!r}"))
            for status in RUN_STATUSES:
                if status != RunStatus.FAILED.value:
                    pipe.zrem(runs_by_status_key(status), run_id)
            score = now.timestamp()
            pipe.zadd(runs_by_status_key(RunStatus.FAILED.value), {run_id: score})
            pipe.zadd(RUNS_ALL, {run_id: score})
            org = header.get("org_id")
            for active in ([active_runs_key(str(org or ""))] if active_sets is None
                           else active_sets):
                pipe.srem(active, run_id)
            await pipe.execute()
            return message

        return await self._redis.transaction("fail unreadable run", key, [key, aside], txn)

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

        with self.deleting():  # (counted: ``ports.CountsDeletions``)
            await self._redis.transaction("delete run", key, [key], txn)


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


    def _whole_run(self, run: WorkflowRun) -> dict[str, bytes]:
        """Every field of the run's hash (``create_run``/``update_run``)."""
        rid = run.id
        fields: dict[str, bytes] = {
            HEADER: header_json(run, ("run {!r}", rid)),
            INPUT: dumps(run.input, ("run {!r}.input", rid)),
        }

        def put(field: str, value: bytes) -> None:
            fields[field] = value
            if field != CTX_STEPS_MARKER or value != EMPTY_MAP:
                fields[ORD + field] = self._rank()

        for sid, sr in run.steps.items():
            put(step_field(sid), step_json(sr, ("run {!r} step {!r}", rid, sid),
                                           with_children=False))
            for cid, child in sr.children.items():
                put(child_field(sid, cid), step_json(child, ("run {!r} step {!r}", rid, cid)))
        for k, v in run.context.items():
            if k == "steps" and isinstance(v, dict):
                put(CTX_STEPS_MARKER, EMPTY_MAP)
                for sk, sv in v.items():
                    put(ctxstep_field(sk), dumps(sv, ("run {!r} context.steps.{}", rid, sk)))
            else:
                put(ctx_field(k), dumps(v, ("run {!r} context.{}", rid, k)))
        return fields
