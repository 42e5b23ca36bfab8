"""The run indexes (``wf:runs:*`` zsets, ``wf:runs:active:<org>`` sets): how a write moves a
run between them, and the listings that read them.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.ports import (
    DEFAULT_RUN_LIMIT,
    DEFAULT_STATUS_LIMIT,
    status_text,
)
from cordtrio.ratelog import RateLimitedLog

from .base import TERMINAL_STATUSES, RedisStoreBase
from .keys import (
    RUNS_ALL,
    active_runs_key,
    run_key,
    runs_by_status_key,
    runs_by_workflow_key,
)
from .redis_errors import RedisDataError
from .run_hash import assemble, text

log = logging.getLogger(__name__)
_CORRUPT_LOG = RateLimitedLog(log)
"""Listings meet the same corrupt entry on every call: one line per key per minute."""



RUN_STATUSES = tuple(s.value for s in RunStatus)
_ONE_STATUS: dict[object, tuple[str, ...]] = {s: (s._value_,) for s in RunStatus}


def previous_statuses(previous: object) -> tuple[str, ...]:
    """The status zsets a run may be in before a header write: its previous status's
    (``RunChanges.previous_status``), or all of them when it is not known (None). (The
    tuple kept per status: every step's write asks.)"""
    if previous is None:
        return RUN_STATUSES
    return _ONE_STATUS.get(previous) or (status_text(previous),)


def _is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES  # an unknown status is not terminal


def ts_score(value: datetime | None) -> float:
    """A timestamp as an index score (unix seconds; 0 when unset)."""
    return value.timestamp() if value is not None else 0.0



def run_status_text(status: object) -> str:
    """``status_text`` without the enum's Python-level ``value`` property for a
    ``RunStatus`` (its ``_value_`` is the same string): every step writes a status."""
    return status._value_ if type(status) is RunStatus else status_text(status)  # type: ignore[attr-defined]


def index_moves(run: WorkflowRun, status: str, previous: tuple[str, ...],
                sync_active: bool = False,
                ) -> tuple[tuple[str, ...], tuple[str, ...], float, tuple[str, str] | None]:
    """The index moves of a write of ``run`` in ``status``: the status zsets it leaves, the
    zsets it is added to (its status's and ``wf:runs:all``) with its score (``updated_at``,
    else ``created_at``), and the active-set command (``SADD``/``SREM`` and the set), if
    any (``status_moves``)."""
    stamp = run.updated_at
    updated = stamp.timestamp() if stamp is not None else 0.0
    if not updated:
        updated = ts_score(run.created_at)
    removed, added, active = status_moves(status, previous, sync_active)
    return removed, added, updated, None if active is None else (
        active, active_runs_key(run.org_id))


@lru_cache(maxsize=1024)
def status_moves(status: str, previous: tuple[str, ...], sync_active: bool,
                 ) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """``index_moves`` by status (a few statuses: cached): the status zsets left, the zsets
    added to, and ``SADD``/``SREM`` of the active set or None. ``previous``: the status
    zsets the run may be in now. The active set is left alone when the run stays active
    (or finished) — the same status, or one known previous status on the same side —
    unless ``sync_active``."""
    removed = tuple(runs_by_status_key(old) for old in previous if old != status)
    added = (runs_by_status_key(status), RUNS_ALL)
    if not removed and previous and not sync_active:
        return removed, added, None  # same status (and the org never changes here)
    if not sync_active and len(previous) == 1 and \
            _is_terminal(previous[0]) == _is_terminal(status):
        return removed, added, None  # active before and after (or neither)
    return removed, added, "SREM" if _is_terminal(status) else "SADD"


class RedisRunIndex(RedisStoreBase):
    """Mixin of ``RedisStore``: queue index moves for run writes; count and list runs."""

    @staticmethod
    def _index_commands(run: WorkflowRun, status: str, *, previous: tuple[str, ...],
                        ) -> list[tuple[Any, ...]]:
        """``_queue_index``'s commands as argument tuples, for a script that carries them
        (a create, ``leases.commands_if_absent``): the same moves, in the same order
        (tests/redis/test_redis_create.py compares the two)."""
        removed, added, score, active = index_moves(run, status, previous)
        rid = run.id
        commands: list[tuple[Any, ...]] = [("ZREM", name, rid) for name in removed]
        for name in added:
            commands.append(("ZADD", name, score, rid))
        if active is not None:
            commands.append((active[0], active[1], rid))
        return commands

    @staticmethod
    def _queue_index(
        pipe: Any, run: WorkflowRun, status: str, *, previous: tuple[str, ...],
        sync_active: bool = False,
    ) -> None:
        """Queue the moves of the status, global and active-set indexes (``index_moves``)."""
        removed, added, score, active = index_moves(run, status, previous, sync_active)
        for name in removed:
            pipe.zrem(name, run.id)
        for name in added:
            pipe.zadd(name, {run.id: score})
        if active is not None:
            if active[0] == "SADD":
                pipe.sadd(active[1], run.id)
            else:
                pipe.srem(active[1], run.id)

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
        return await self._runs([text(x) for x in ids], index)

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
        status = status_text(status)
        index = runs_by_status_key(status)
        if self.retention_seconds is None or status not in TERMINAL_STATUSES:
            ids = await self._redis.call("list runs by status", index, "zrevrange", index, 0,
                                         limit - 1)
            return [text(x) for x in ids]
        # Finished runs expire ``retention_seconds`` after their last write, which is their
        # score here: drop the expired ids in the same round trip.
        cutoff = self._now().timestamp() - self.retention_seconds
        _, ids = await self._redis.pipeline(
            "list runs by status", index,
            [("zremrangebyscore", (index, "-inf", f"({cutoff}")),
             ("zrevrange", (index, 0, limit - 1))], transaction=False)
        return [text(x) for x in ids]

    async def _runs(self, ids: list[str], index: str = RUNS_ALL) -> list[WorkflowRun]:
        """The runs with these ids, in order, skipping missing and corrupt ones. Ids of runs
        that are gone (expired after the retention) are dropped from ``index`` and
        ``wf:runs:all`` on the way."""
        if not ids:
            return []
        keys = [run_key(rid) for rid in ids]
        replies = await self._redis.pipeline(
            "list runs", keys[0], [("hgetall", (k,)) for k in keys],
            transaction=False, raise_on_error=False,
        )
        out: list[WorkflowRun] = []
        gone: list[str] = []
        for rid, key, reply in zip(ids, keys, replies, strict=True):
            if isinstance(reply, Exception):
                if not isinstance(reply, RedisDataError):
                    raise reply
                _CORRUPT_LOG.warning(key, "corrupt run skipped: %s", reply)
                continue
            if not reply:
                gone.append(rid)  # expired, or deleted between the index read and now
                continue
            try:
                out.append(assemble(key, reply))
            except RedisDataError as exc:  # listing skips corrupt entries (SPEC §11)
                _CORRUPT_LOG.warning(key, "corrupt run skipped: %s", exc)
        if gone:
            commands = [("zrem", (RUNS_ALL, *gone))]
            if index != RUNS_ALL:
                commands.append(("zrem", (index, *gone)))
            await self._redis.pipeline("drop expired run ids", index, commands,
                                       transaction=False)
        return out
