"""``save_run_changes``, the engine's hot path: write only the run-hash fields an event changed
(one ``MULTI``/``EXEC`` or, fenced by the run's lease, one script), see ``store.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cordtrio.errors import LeaseLostError, NotFoundError
from cordtrio.model import StepRun, TimelineEvent, WorkflowRun
from cordtrio.ports import (
    RunChanges,
    child_order_key,
    status_text,
)

from .adapter import RedisDataError
from .keys import (
    CTX_STEPS_MARKER,
    CTXSTEP,
    EMPTY_MAP,
    HEADER,
    INPUT,
    ORD,
    RUNS_ALL,
    active_runs_key,
    child_field,
    child_prefix,
    ctx_field,
    ctxstep_field,
    run_key,
    runs_by_status_key,
    step_field,
)
from .leases import fenced_commands, lease_key
from .run_hash import FieldOps, dumps, ordered, text
from .run_index import RUN_STATUSES, RedisRunIndex
from .timelines import RedisTimelines


class RedisRunChanges(RedisRunIndex, RedisTimelines):
    """Mixin of ``RedisStore``: partial, optionally lease-fenced run writes."""

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
                ops.resolve(await _stored_fields(pipe, key, run.id))
                pipe.multi()
                self._queue_ops(pipe, key, ops)
                if changes.header:
                    self._queue_index(pipe, run, status, previous=previous)
                self._queue_timeline(pipe, run.id, docs)
                if changes.header:
                    self._queue_retention(pipe, run, status)
                await pipe.execute()

            await self._redis.transaction("save run changes", key, [key], txn)
            return

        def commands(pipe: Any) -> None:
            pipe.hexists(key, HEADER)
            self._queue_ops(pipe, key, ops)
            if changes.header:
                self._queue_index(pipe, run, status, previous=previous)
            self._queue_timeline(pipe, run.id, docs)
            if changes.header:
                self._queue_retention(pipe, run, status)

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
            if ops is not None and changes.header:
                self._queue_retention(pipe, run, status)

        if ops is not None and ops.prefixes:
            async def txn(pipe: Any) -> bool:
                holder = await pipe.get(lease)
                if holder is None or text(holder) != owner:
                    raise lost(holder)
                ops.resolve(await _stored_fields(pipe, key, run.id))
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


async def _stored_fields(pipe: Any, key: str, run_id: str) -> list[str]:
    """The field names of the run hash at ``key`` (read inside a WATCH transaction), for the
    writes that remove fields by prefix; a missing run or one without its header fails."""
    stored = [text(f) for f in await pipe.hkeys(key)]
    if HEADER not in stored:
        if stored:
            raise RedisDataError(f"redis key {key!r}: run has no header field")
        raise NotFoundError(f"run {run_id!r} not found")
    return stored
