"""``create_run``'s script carries its commands as argument tuples built straight from the
run: its index moves and retention ``EXPIRE``s are those ``_queue_index`` and
``_queue_retention`` queue on a pipeline for any other write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from cordtrio.backends.redis.adapter import RedisAdapter
from cordtrio.backends.redis.run_index import RUN_STATUSES, RedisRunIndex
from cordtrio.backends.redis.store import RedisStore
from cordtrio.model import RunStatus, WorkflowRun

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = [s.value for s in RunStatus] + ["unknown"]


class _Pipe:
    """The commands queued on it, as the argument tuples redis-py sends."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def zadd(self, name: str, mapping: dict[str, float]) -> None:
        for member, score in mapping.items():
            self.commands.append(("ZADD", name, score, member))

    def zrem(self, name: str, *members: str) -> None:
        self.commands.append(("ZREM", name, *members))

    def sadd(self, name: str, *members: str) -> None:
        self.commands.append(("SADD", name, *members))

    def srem(self, name: str, *members: str) -> None:
        self.commands.append(("SREM", name, *members))

    def expire(self, name: str, ttl: int) -> None:
        self.commands.append(("EXPIRE", name, ttl))


@pytest.mark.parametrize("status", STATUSES)
def test_index_commands_are_the_moves_queued(status: str) -> None:
    for previous in [(), RUN_STATUSES, *((s,) for s in STATUSES)]:
        for updated in (None, T0):
            run = WorkflowRun(id="r1", org_id="o", created_at=T0 - timedelta(days=1),
                              updated_at=updated)
            pipe = _Pipe()
            RedisRunIndex._queue_index(pipe, run, status, previous=previous)
            assert RedisRunIndex._index_commands(run, status, previous=previous) == \
                pipe.commands


@pytest.mark.parametrize("retention", [None, 3600])
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("key", ["", "k1"])
def test_retention_commands_are_those_queued(retention: int | None, status: str,
                                             key: str) -> None:
    store = RedisStore(RedisAdapter(fakeredis.FakeAsyncRedis(), None, "redis://test"),
                       retention_seconds=retention)
    run = WorkflowRun(id="r1", idempotency_key=key, created_at=T0)
    pipe = _Pipe()
    store._queue_retention(pipe, run, status)
    assert store._retention_commands(run, status) == pipe.commands
    if retention is not None and status in ("succeeded", "failed", "cancelled"):
        assert pipe.commands
