"""The state every part of ``RedisStore`` shares: the connection, the clock and the
insertion ranks of run-hash fields (see ``store.py`` for the key layout).
"""

from __future__ import annotations

from datetime import datetime
from time import time_ns
from typing import Any

from cordtrio.clock import SystemClock
from cordtrio.model import RunStatus, Workflow, WorkflowRun
from cordtrio.ports import Clock

from .adapter import RedisAdapter
from .field_mirror import FieldMirror
from .keys import idempotency_key, run_key, timeline_key

TERMINAL_STATUSES = frozenset(s.value for s in RunStatus if s.is_terminal)
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
"""Finished runs are kept a week by default (``connect(retention_seconds=...)``)."""


def retention_keys(run: WorkflowRun) -> list[str]:
    """The keys a finished run's retention expires: its hash, its timeline and its
    idempotency key (if it has one)."""
    keys = [run_key(run.id), timeline_key(run.id)]
    if run.idempotency_key:
        keys.append(idempotency_key(run.idempotency_key))
    return keys


class RedisStoreBase:
    """Base of the ``RedisStore`` mixins: the ``RedisAdapter``, the clock that stamps the
    timestamps the store fills in, and the rank counter of ``ord:<field>`` entries."""

    def __init__(self, redis: RedisAdapter, *, clock: Clock | None = None,
                 retention_seconds: float | None = None) -> None:
        self._redis = redis
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._last_rank = 0
        self._mirror = FieldMirror()
        """The hash field names of the runs this store created, read or wrote."""
        self._parsed_workflows: dict[str, tuple[bytes, Workflow]] = {}
        """Per workflow key: the bytes ``get_workflow`` read last, and what they parse to."""
        self.retention_seconds: int | None = (
            max(1, int(retention_seconds)) if retention_seconds else None)
        """Finished runs expire this long after they finish (``None``: kept forever)."""

    def _now(self) -> datetime:
        return self._clock.now()

    def _queue_retention(self, pipe: Any, run: WorkflowRun, status: str) -> None:
        """With a retention, a run written in a terminal status gets ``EXPIRE`` on its hash,
        its timeline and its idempotency key — queued after those writes, in the same
        transaction or script (no extra round trip)."""
        for _, key, ttl in self._retention_commands(run, status):
            pipe.expire(key, ttl)

    def _retention_commands(self, run: WorkflowRun, status: str) -> list[tuple[str, str, int]]:
        """``_queue_retention``'s ``EXPIRE`` commands as argument tuples (none for a run
        not finished, or without a retention)."""
        ttl = self.retention_seconds
        if ttl is None or status not in TERMINAL_STATUSES:
            return []
        return [("EXPIRE", key, ttl) for key in retention_keys(run)]

    def _rank(self) -> bytes:
        """A fresh insertion rank: increasing within this process, and across processes as
        far as their wall clocks agree (nanoseconds since the epoch)."""
        rank = time_ns()
        if rank <= self._last_rank:
            rank = self._last_rank + 1
        self._last_rank = rank
        return b"%d" % rank  # a step takes several: no max() or str().encode() calls

    def _ranks(self, count: int) -> int:
        """The first of ``count`` fresh consecutive ranks (``_rank`` ``count`` times
        without a clock read each: the step script derives them from the first)."""
        rank = time_ns()
        if rank <= self._last_rank:
            rank = self._last_rank + 1
        self._last_rank = rank + count - 1
        return rank
