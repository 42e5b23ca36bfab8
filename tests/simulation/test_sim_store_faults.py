"""Ambiguous store writes (applied, reply lost) and failed reads: the flaky store injects
them, the simulation counts them, and the engine copes (it retries writes; an ambiguous
write retried breaks no invariant)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from cordtrio.backends.memory import MemoryStore
from cordtrio.errors import StoreError
from cordtrio.model import RunStatus, WorkflowRun
from cordtrio.testing import SimulationTotals, simulate
from cordtrio.testing.store_faults import AmbiguousStoreError, FlakyStore


def _run(run_id: str) -> WorkflowRun:
    return WorkflowRun(id=run_id, workflow_id="wf", status=RunStatus.PENDING,
                       created_at=datetime(2030, 1, 1, tzinfo=UTC))


async def test_an_ambiguous_write_is_applied_and_reports_an_error() -> None:
    inner = MemoryStore()
    faults: list[tuple[str, str, str]] = []
    store = FlakyStore(inner, random.Random(1), 0.0, ambiguous_rate=1.0,
                       on_fault=lambda *f: faults.append(f))
    with pytest.raises(AmbiguousStoreError):
        await store.create_run(_run("r1"))
    assert (await inner.get_run("r1")).id == "r1"  # applied all the same
    assert faults == [("ambiguous", "create_run", "r1")]
    assert isinstance(AmbiguousStoreError("x"), StoreError)  # callers retry it as any


async def test_reads_fail_and_stop_failing() -> None:
    inner = MemoryStore()
    await inner.create_run(_run("r1"))
    store = FlakyStore(inner, random.Random(1), 0.0, read_fail_rate=1.0)
    with pytest.raises(StoreError, match="injected transient read failure"):
        await store.get_run("r1")
    with pytest.raises(StoreError):
        await store.list_timeline_events("r1")
    store.stop()
    assert (await store.get_run("r1")).id == "r1"
    assert store.failures["get_run (read)"] == 1
    with pytest.raises(ValueError, match="ambiguous_rate"):
        FlakyStore(inner, random.Random(1), ambiguous_rate=2.0)


def test_the_engine_copes_with_many_ambiguous_writes_and_failed_reads() -> None:
    totals = SimulationTotals()
    for seed in range(30):
        totals.add(simulate(seed, faults="light", store_ambiguous_rate=0.25,
                            store_read_fail_rate=0.25, engines=1 + seed % 2))
    assert totals.faults["store_ambiguous"] > 100
    assert totals.faults["store_read_failure"] > 100
    assert totals.situations["ambiguous write"] == totals.faults["store_ambiguous"]
    assert totals.statuses["succeeded"] > 0


def test_ambiguous_writes_appear_in_the_trace_and_presets_set_them() -> None:
    report = simulate(4, faults="heavy")
    lines = [line for line in report.trace if " fault store_ambiguous " in line]
    assert lines and report.faults_injected["store_ambiguous"] == len(lines)
    quiet = simulate(4, faults="none", crash=False)
    assert not quiet.faults_injected.get("store_ambiguous")
    assert not quiet.faults_injected.get("store_read_failure")


