"""Helpers shared by the Redis store's tests: a raw command, a running run to write to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cordtrio.backends.redis import RedisBackends
from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def raw(r: RedisBackends, method: str, *args: Any) -> Any:
    """One Redis command as the store's connection sends it (no store logic)."""
    return await r.redis.call("test", "", method, *args)


async def a_run(r: RedisBackends) -> WorkflowRun:
    """``run-1`` created in the store: running, its step ``s0`` running (attempt 1)."""
    run = WorkflowRun(id="run-1", workflow_id="wf-1", org_id="org-a",
                      status=RunStatus.RUNNING, input={}, created_at=T0, updated_at=T0)
    run.steps["s0"] = StepRun(step_id="s0", status=StepStatus.RUNNING, attempts=1)
    await r.store.create_run(run)
    return run


def scripts_sent_twice(r: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every script call the store makes is sent twice, as the adapter sends a write again
    when the connection broke before its reply came: the first is applied, its reply lost
    (``monkeypatch.undo()`` ends it)."""
    adapter = r.store._redis
    script = adapter.script

    async def twice(*args: object, **kwargs: bool) -> object:
        await script(*args, **kwargs)  # applied; its reply lost with the connection
        return await script(*args, **kwargs)  # the same bytes, sent again

    monkeypatch.setattr(adapter, "script", twice)
