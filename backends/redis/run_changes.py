"""``save_run_changes``, the engine's hot path: write only the run-hash fields an event changed,
with the step's timeline, index moves and dispatched job inputs, in one purpose-built script
(``step_write``; fenced by the run's lease in multi-engine mode, and releasing it with a
finished run's last write: ``RunChanges.release_lease``), see ``store.py``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

from cordtrio.errors import LeaseLostError, NotFoundError
from cordtrio.model import StepRun, TimelineEvent, WorkflowRun
from cordtrio.ports import (
    CreatesRunsOnWrite,
    RunChanges,
    child_order_key,
    status_text,
)

from . import payloads as payload_store
from .keys import (
    CTX_STEPS_MARKER,
    CTXSTEP,
    EMPTY_MAP,
    HEADER,
    INPUT,
    ORD,
    STEP,
    child_field,
    child_prefix,
    ctx_field,
    ctxstep_field,
    run_key,
    step_field,
)
from .leases import COMMANDS_QUEUE, RELEASE_SCRIPT, inbox_key, lease_key, processing_key
from .payloads import RedisPayloadStore
from .redis_errors import RedisDataError
from .run_hash import FieldOps, dumps, ordered, text
from .run_index import previous_statuses
from .run_json import header_json, step_json
from .runs import RedisRuns
from .step_argv import step_argv
from .step_write import (
    NOT_FOUND,
    STEP_SCRIPT,
    releasing_step_keys,
    report_step_commands,
    step_keys,
)
from .timelines import RedisTimelines

_TOKEN_PREFIX = os.urandom(6).hex()
_WRITE_TOKENS: Iterator[str] = map((_TOKEN_PREFIX + "{}").format, itertools.count())
"""Tokens no other step write carries (this process's random prefix and a counter, made in
C: ``next``): ``STEP_SCRIPT`` applies a write whose token the run hash already holds only
once."""


class RedisRunChanges(RedisRuns, RedisTimelines, CreatesRunsOnWrite):
    """Mixin of ``RedisStore``: partial, optionally lease-fenced run writes, with the job
    input payloads they dispatch (``ports.PayloadCommit``); and a write that creates the
    run (``ports.CreatingWrites``: the create script of ``RedisRuns``)."""

    _commits_payloads = False  # a payload store was accepted by ``commits_payloads_of``
    _payload_ttl: int | None = None  # and its TTL
    _payload_stores: tuple[RedisPayloadStore, ...] = ()  # the accepted ones

    def commits_payloads_of(self, payloads: object) -> bool:
        """True for a ``RedisPayloadStore`` on this store's connection (``connect`` builds
        one): its job inputs are written by ``save_run_changes`` (``RunChanges.payloads``)
        with its TTL, and it hears of each write (``committing``/``committed``: it answers
        its own process's read of such an input without a round trip). One TTL per store:
        a second payload store with another is refused."""
        if not isinstance(payloads, RedisPayloadStore) or payloads.adapter is not self._redis:
            return False
        if not self._commits_payloads:
            self._commits_payloads, self._payload_ttl = True, payloads.ttl_seconds
        if self._payload_ttl != payloads.ttl_seconds:
            return False
        if payloads not in self._payload_stores:
            self._payload_stores += (payloads,)
        return True

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        """Write only the parts of ``run`` named in ``changes`` (see ``RunChanges`` and the
        module docstring), the payloads it carries, and append ``timeline``: one script
        (``step_write``), no read before it. A named part that is absent from ``run`` is
        deleted. Indexes move only when ``changes.header`` is set. Fenced by the run's
        lease when ``changes.lease_owner`` is set, and releasing it too with
        ``changes.release_lease``."""
        docs = self._timeline_docs(run.id, timeline)
        if changes.created:
            await self._create_changed(run, changes, docs)
            return
        owner = changes.lease_owner
        if owner is None and not changes.header and not changes:  # (a step: the header)
            # Nothing to write, but a missing run is still an error.
            key = run_key(run.id)
            if not await self._redis.call("save run changes", key, "exists", key):
                raise NotFoundError(f"run {run.id!r} not found")
            return
        if changes.header and run.updated_at is None:
            run.updated_at = self._now()
        keys = releasing_step_keys(run.id) if changes.release_lease and owner else \
            step_keys(run.id)
        key = keys[0]
        token = next(_WRITE_TOKENS)  # the same bytes when the adapter sends it again
        known = self._mirror.get(run) if changes.header else None
        if known is not None and HEADER not in known:
            known = None  # the header write is how the script tells a missing run
        try:  # the arguments update the mirror's names in place: any failure drops them
            built = step_argv(
                run, changes, owner or "", token, known, self._ranks, docs,
                self.retention_seconds, self._committed_ttl() if changes.payloads else None)
            if built is None:  # the rare path: a step's children / all context steps go
                await self._save_reading_fields(run, changes, self._change_ops(run, changes),
                                                docs)
                return
            if self._redis.on_command is not None:
                report_step_commands(built[0], keys, self._redis.on_command)
            if changes.payloads:
                sent_at = self._committing(changes.payloads)
            reply = await self._redis.script(
                "save run changes", key, STEP_SCRIPT,
                keys, built[0], plain=built[1])
        except BaseException:
            self._mirror.forget(run)  # it may have run all the same: read next time
            raise
        if reply[0] == 1:
            if known is not None and not int(reply[1]):
                self._mirror.kept(run, known)  # the names after the write (updated in place)
            else:
                self._mirror.forget(run)  # written without a mirror, or it was off
            if changes.payloads:
                self._committed(changes.payloads, sent_at)
            return
        self._mirror.forget(run)
        if reply[0] == NOT_FOUND:
            raise NotFoundError(f"run {run.id!r} not found")
        raise self._lost(run, reply[1], owner)

    async def _create_changed(self, run: WorkflowRun, changes: RunChanges,
                              docs: list[bytes]) -> None:
        """``save_run_changes`` of a write that creates the run (``changes.created``): the
        create script (``_create``) with the write's token, timeline and job inputs, and,
        fenced (``lease_owner``), the run's lease taken in it."""
        owner = changes.lease_owner
        payloads = changes.payloads
        then: list[tuple[Any, ...]] = []
        if payloads:
            ttl = self._committed_ttl()
            then = [("SET", key, data) if ttl is None else ("SET", key, data, "EX", ttl)
                    for key, data in payloads.items()]
            sent_at = self._committing(payloads)
        await self._create(
            run, None if owner is None else (lease_key(run.id), owner, changes.lease_ttl),
            token=changes.created, docs=docs, then=then)
        if payloads:
            self._committed(payloads, sent_at)

    def _committed_ttl(self) -> int | None:
        if not self._commits_payloads:
            raise ValueError("RunChanges.payloads given, but no payload store is committed "
                             "by this store (commits_payloads_of)")
        return self._payload_ttl

    def _committing(self, payloads: dict[str, bytes]) -> float:
        """Tell the payload stores a write of these inputs is going: the time it went."""
        for store in self._payload_stores:
            store.committing(payloads)
        return payload_store.clock()

    def _committed(self, payloads: dict[str, bytes], sent_at: float) -> None:
        for store in self._payload_stores:
            store.committed(payloads, sent_at)

    @staticmethod
    def _lost(run: WorkflowRun, holder: Any, owner: str | None) -> LeaseLostError:
        shown = text(holder) if holder else "nobody"
        return LeaseLostError(f"run {run.id}: lease held by {shown}, not {owner}; "
                              "not written")

    async def _save_reading_fields(self, run: WorkflowRun, changes: RunChanges, ops: FieldOps,
                                   docs: list[bytes]) -> None:
        """``save_run_changes`` when parts are removed by prefix (a step with its children,
        the whole ``context["steps"]`` map): the field names are read with ``HKEYS`` in a
        ``WATCH`` transaction on the run (and the lease, read before ``MULTI``, when
        fenced), then the writes go in its ``MULTI``/``EXEC`` (with the release script,
        ``changes.release_lease``)."""
        key = run_key(run.id)
        lease = lease_key(run.id)
        owner = changes.lease_owner
        status = status_text(run.status)
        ttl = self._committed_ttl() if changes.payloads else None

        async def txn(pipe: Any) -> None:
            if owner is not None:
                holder = await pipe.get(lease)
                if holder is None or text(holder) != owner:
                    raise self._lost(run, holder, owner)
            ops.resolve(await _stored_fields(pipe, key, run.id))
            pipe.multi()
            self._queue_ops(pipe, key, ops)
            if changes.header:
                self._queue_index(pipe, run, status,
                                  previous=previous_statuses(changes.previous_status))
            self._queue_timeline(pipe, run.id, docs)
            if changes.header:
                self._queue_retention(pipe, run, status)
            for payload_key, data in changes.payloads.items():
                pipe.set(payload_key, data, ex=ttl)
            if owner is not None and changes.release_lease:
                rid = run.id
                pipe.eval(RELEASE_SCRIPT, 4, lease, inbox_key(rid), COMMANDS_QUEUE,
                          processing_key(rid), owner, rid)
            await pipe.execute()

        watched = [key] if owner is None else [lease, key]
        self._mirror.forget(run)
        sent_at = self._committing(changes.payloads) if changes.payloads else 0.0
        await self._redis.transaction("save run changes", key, watched, txn)
        if changes.payloads:
            self._committed(changes.payloads, sent_at)

    def _queue_ops(self, pipe: Any, key: str, ops: FieldOps) -> None:
        """Queue the hash writes of the rare path (``_save_reading_fields``): one HSET
        (values, and ranks of re-created fields), an HSETNX per other written field (its
        rank, if new), one HDEL."""
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
        rid = run.id
        ops = FieldOps()
        put = ops.put
        if changes.header:
            put(HEADER, header_json(run, ("run {!r}", rid)))
        steps = run.steps
        for sid in ordered(changes.steps, steps):
            sr = steps.get(sid)
            if sr is None:
                ops.drop(step_field(sid))
                ops.drop_prefix(child_prefix(sid))
            else:
                put(STEP + sid, step_json(sr, ("run {!r} step {!r}", rid, sid),
                                          with_children=False))
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
                            step_json(child, ("run {!r} step {!r}", rid, cid)))
        context = run.context
        for k in ordered(changes.context_keys, context) if changes.context_keys else ():
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
                        ops.put(ctxstep_field(sk),
                                dumps(sv, ("run {!r} context.steps.{}", rid, sk)))
                else:
                    ops.drop(CTX_STEPS_MARKER)
                    ops.put(CTX_STEPS_MARKER, dumps(value, ("run {!r} context.steps", rid)))
            elif present:
                ops.put(ctx_field(k), dumps(value, ("run {!r} context.{}", rid, k)))
            else:
                ops.drop(ctx_field(k))
        if changes.context_steps:
            ctx_steps = context.get("steps")
            if not isinstance(ctx_steps, dict):
                for sk in changes.context_steps:
                    ops.drop(ctxstep_field(sk))
            else:
                if CTX_STEPS_MARKER not in ops.writes:
                    put(CTX_STEPS_MARKER, EMPTY_MAP)
                keys = changes.context_steps
                for sk in sorted(keys, key=child_order_key) if len(keys) > 1 else keys:
                    if sk in ctx_steps:
                        put(CTXSTEP + sk,
                            dumps(ctx_steps[sk], ("run {!r} context.steps.{}", rid, sk)))
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
