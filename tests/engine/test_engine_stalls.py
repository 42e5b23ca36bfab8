"""API calls whose run task is stuck on a store outage (``cordtrio.engine.stalls``): the
caller gets a ``StoreError`` naming the store after ``STALL_PROBE_SEC`` instead of waiting
out the outage, while the run task keeps the command and applies it once the store is
back. One watchdog per engine; a call itself opens no cancel scope."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_engine_kit import WF, step, workflow

from cordtrio.backends.memory import MemoryStore
from cordtrio.engine import open_engine
from cordtrio.engine.stalls import STALL_PROBE_SEC
from cordtrio.errors import StoreError
from cordtrio.model import RunStatus, StepType

WFDEF = workflow(step("gate", type=StepType.APPROVAL))


class DownStore(MemoryStore):
    """Every call but ``get_workflow`` fails while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError("memory://test: connection refused")

    async def save_run_changes(self, *args: Any, **kw: Any) -> None:
        self._check()
        await super().save_run_changes(*args, **kw)

    async def list_run_ids_by_status(self, *args: Any, **kw: Any) -> list[str]:
        self._check()
        return await super().list_run_ids_by_status(*args, **kw)

    async def get_run_by_idempotency_key(self, key: str) -> str | None:
        self._check()
        return await super().get_run_by_idempotency_key(key)


async def test_a_call_stuck_on_a_store_outage_fails_with_the_store_error(
        bus, payloads, autojump_clock):
    store = DownStore()
    await store.save_workflow(WFDEF)
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        store.down = True
        start = trio.current_time()
        with pytest.raises(StoreError, match=rf"run {run_id}: Approve not confirmed, the "
                                             r"store is not answering: memory://test"):
            await engine.approve_step(run_id, "gate")
        assert trio.current_time() - start == pytest.approx(STALL_PROBE_SEC, abs=0.01)
        store.down = False  # the task kept the approval and applies it now
        run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED


async def test_a_slow_call_on_a_store_that_answers_keeps_waiting(bus, payloads,
                                                                 autojump_clock):
    store = DownStore()
    await store.save_workflow(WFDEF)
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        real = store.save_run_changes

        async def slow(*args: Any, **kw: Any) -> None:
            await trio.sleep(5 * STALL_PROBE_SEC)
            await real(*args, **kw)

        store.save_run_changes = slow  # type: ignore[method-assign]
        start = trio.current_time()
        await engine.approve_step(run_id, "gate")
        assert trio.current_time() - start == pytest.approx(5 * STALL_PROBE_SEC, abs=0.01)


async def test_the_watchdog_sets_no_deadline_while_no_call_waits(store, bus, payloads,
                                                                  autojump_clock):
    await store.save_workflow(WFDEF)
    # (resend_after=0: the engine's resend sweep wakes every minute otherwise)
    async with open_engine(store, bus, payloads=payloads, resend_after=0) as engine:
        await engine.submit(WF)  # parks on its approval: no run task, no timer left
        await trio.sleep(STALL_PROBE_SEC)  # the watchdog's check for the submit is due
        assert engine.active_runs == 0
        # (the only deadline left is the test fixture's 8 h watchdog)
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline > 3600
