"""Fixtures of the engine (Trio shell) integration tests; helpers are in test_engine_kit.

* ``store``/``bus``/``payloads``/``clock`` — in-memory backends and one wall clock tied to
  Trio's clock (share it between engines so a restarted engine agrees on timestamps).
* ``engine`` — an open engine over them.
* ``submits``/``cancels``/``alerts`` — taps recording every packet on a subject, with the
  Trio time it was published.
* ``save`` — store a workflow built from steps.
* ``watchdog`` — fails a test that hangs instead of hanging the suite.

Every test starts with the process-wide rate-limited logs empty (``ratelog.rate_limited``
keeps a window per message on the real clock: a warning one test logged would be dropped in
the next).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_engine_kit import T0, Tap, tapping, workflow

from cordtrio import ratelog
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.engine.supervisor import Engine
from cordtrio.model import Step, Workflow
from cordtrio.ports import Bus
from cordtrio.protocol import SUBJECT_CANCEL, SUBJECT_SUBMIT, SUBJECT_WORKFLOW_EVENT


@pytest.fixture(autouse=True)
def fresh_rate_limited_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelog, "_SHARED", {})


WATCHDOG_VIRTUAL = 8 * 3600.0  # under MockClock: longer than any test's virtual time
WATCHDOG_REAL = 10.0


async def _bark(limit: float) -> None:
    await trio.sleep(limit)
    raise TimeoutError(f"test still running after {limit:g} s of Trio time: hung?")


@pytest.fixture
async def watchdog() -> AsyncIterator[None]:
    """Turn a hang into a failure: a crashing fixture cancels the test (pytest-trio).
    pytest-trio tears a fixture down as soon as no test or fixture *uses* it, so the
    backend fixtures below request it (an autouse fixture would end at once)."""
    mock = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_bark, WATCHDOG_VIRTUAL if mock else WATCHDOG_REAL)
        yield
        nursery.cancel_scope.cancel()


@pytest.fixture
async def store(watchdog: None) -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def bus(watchdog: None) -> MemoryBus:
    return MemoryBus()


@pytest.fixture
async def payloads(watchdog: None) -> MemoryPayloadStore:
    return MemoryPayloadStore(ttl_seconds=None)


@pytest.fixture
async def clock() -> TrioWallClock:
    return TrioWallClock(start=T0)


@pytest.fixture
async def submits(bus: Bus) -> AsyncIterator[Tap]:
    async with tapping(bus, SUBJECT_SUBMIT) as tap:
        yield tap


@pytest.fixture
async def cancels(bus: Bus) -> AsyncIterator[Tap]:
    async with tapping(bus, SUBJECT_CANCEL) as tap:
        yield tap


@pytest.fixture
async def alerts(bus: Bus) -> AsyncIterator[Tap]:
    async with tapping(bus, SUBJECT_WORKFLOW_EVENT) as tap:
        yield tap


@pytest.fixture
async def engine(
    store: MemoryStore, bus: Bus, payloads: MemoryPayloadStore, clock: TrioWallClock,
    submits: Tap, cancels: Tap,
) -> AsyncIterator[Engine]:
    async with open_engine(store, bus, payloads=payloads, clock=clock) as eng:
        yield eng


@pytest.fixture
def save(store: MemoryStore) -> Callable[..., Any]:
    """``await save(step(...), ...)`` stores a workflow (id ``wf``) and returns it."""

    async def _save(*steps: Step, **kw: Any) -> Workflow:
        wf = workflow(*steps, **kw)
        await store.save_workflow(wf)
        return wf

    return _save
