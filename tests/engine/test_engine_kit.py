"""Helpers of the engine (Trio shell) integration tests; fixtures are in conftest.py.

``step``/``workflow`` build definitions; ``ok``/``fail`` build job results; ``succeed``
answers a job by hand (storing its output like a worker); ``Tap`` records what the engine
published on a subject, with the Trio time of each packet.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import trio
import trio.testing

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.engine.supervisor import Engine
from cordtrio.model import RunStatus, Step, StepType, Workflow, WorkflowRun
from cordtrio.payloads import pointer_for_key, result_key
from cordtrio.ports import Bus, DirectBus, PayloadStore
from cordtrio.protocol import SUBJECT_PROGRESS, BusPacket, JobProgress, JobResult, JobStatus

T0 = datetime(2030, 1, 1, tzinfo=UTC)
WF = "wf"


# --------------------------------------------------------------------------- building


def step(sid: str, **kw: Any) -> Step:
    """A step; worker-like steps get topic ``job.test`` unless a topic/worker_id is given."""
    kind = StepType(kw.get("type", StepType.WORKER))
    kw["type"] = kind
    if kind.is_worker_like and "topic" not in kw and "worker_id" not in kw:
        kw["topic"] = "job.test"
    return Step(id=sid, **kw)


def workflow(*steps: Step, id: str = WF, **kw: Any) -> Workflow:
    kw.setdefault("org_id", "org1")
    kw.setdefault("team_id", "team1")
    return Workflow(id=id, steps={s.id: s for s in steps}, **kw)


def ok(job_id: str, ptr: str = "") -> JobResult:
    return JobResult(job_id=job_id, status=JobStatus.SUCCEEDED, result_ptr=ptr)


def fail(job_id: str, message: str = "boom", status: JobStatus = JobStatus.FAILED) -> JobResult:
    return JobResult(job_id=job_id, status=status, error_message=message)


async def put_output(payloads: PayloadStore, job_id: str, value: Any) -> str:
    """Store ``value`` as a job's result, as a worker would; returns the pointer."""
    key = result_key(job_id)
    await payloads.put_result(key, json.dumps(value).encode())
    return pointer_for_key(key)


async def succeed(engine: Engine, job_id: str, value: Any = None) -> None:
    """Answer ``job_id`` with SUCCEEDED (and an output when ``value`` is not None)."""
    ptr = await put_output(engine.payloads, job_id, value) if value is not None else ""
    await engine.handle_job_result(ok(job_id, ptr))


async def started(bus: Bus, job_id: str) -> None:
    """Acknowledge the start of ``job_id`` as a worker does (its step's timeout counts from
    here), and let the engine take it in."""
    await bus.publish(SUBJECT_PROGRESS, BusPacket(
        payload=JobProgress(job_id, status=JobStatus.RUNNING)))
    await trio.testing.wait_all_tasks_blocked()


async def timeline_types(store: MemoryStore, run_id: str, step_id: str | None = None) -> list[str]:
    events = await store.list_timeline_events(run_id, limit=1000)
    return [e.type for e in events if step_id is None or e.step_id == step_id]


# --------------------------------------------------------------------------- taps


class Tap:
    """Records ``(trio time, payload)`` for every packet published on one subject.

    A background task records packets as they arrive (so times are exact under a
    ``MockClock``); reading ``items`` also pulls whatever is buffered right now, so a test
    can check what a call had handed to the bus by the time it returned.
    """

    def __init__(self, channel: trio.MemoryReceiveChannel[Any] | None) -> None:
        self._channel = channel
        self._items: list[tuple[float, Any]] = []

    def _record(self, packet: Any) -> None:
        self._items.append((trio.current_time(), packet.payload))

    def _pull(self) -> None:
        while self._channel is not None:
            try:
                packet = self._channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._items.append((trio.current_time(), packet.payload))

    async def _run(self) -> None:
        assert self._channel is not None
        async for packet in self._channel:
            self._items.append((trio.current_time(), packet.payload))

    @property
    def items(self) -> list[tuple[float, Any]]:
        self._pull()
        return list(self._items)

    @property
    def payloads(self) -> list[Any]:
        return [p for _, p in self.items]

    @property
    def job_ids(self) -> list[str]:
        return [p.job_id for p in self.payloads]

    def times_of(self, job_id_prefix: str) -> list[float]:
        return [t for t, p in self.items if p.job_id.startswith(job_id_prefix)]

    def new(self, seen: int) -> list[Any]:
        return self.payloads[seen:]


@asynccontextmanager
async def tapping(bus: Bus, subject: str) -> AsyncIterator[Tap]:
    """On a bus in this process (``DirectBus``) the tap records each packet from within the
    publisher's call; elsewhere from a subscription (see ``Tap``)."""
    if isinstance(bus, DirectBus):
        tap = Tap(None)
        async with bus.listen(subject, "", tap._record):
            yield tap
        return
    async with bus.subscribe(subject, max_buffer=math.inf) as channel, trio.open_nursery() as n:
        tap = Tap(channel)
        n.start_soon(tap._run)
        yield tap
        n.cancel_scope.cancel()


async def create_pending_run(store: MemoryStore, run_id: str, workflow_id: str = WF,
                             **kw: Any) -> WorkflowRun:
    run = WorkflowRun(id=run_id, workflow_id=workflow_id, org_id="org1", team_id="team1",
                      status=RunStatus.PENDING, created_at=T0, **kw)
    await store.create_run(run)
    return run


LEASE_TTL = 15.0
"""Lease TTL of the multi-engine tests' engines."""


async def start_engine(store: MemoryStore, bus: MemoryBus, payloads: MemoryPayloadStore,
                       clock: TrioWallClock, name: str, nursery: trio.Nursery,
                       **kw: Any) -> tuple[Engine, trio.CancelScope]:
    """A multi-engine-mode engine named ``name`` in a task of ``nursery`` (so a test can kill
    it), and its scope."""
    ready: list[tuple[Engine, trio.CancelScope]] = []
    opened = trio.Event()

    async def serve() -> None:
        with trio.CancelScope() as scope:
            async with open_engine(store, bus, payloads=payloads, clock=clock,
                                   engine_id=name, lease_ttl=LEASE_TTL, multi_engine=True,
                                   **kw) as engine:
                ready.append((engine, scope))
                opened.set()
                await trio.sleep_forever()

    nursery.start_soon(serve)
    await opened.wait()
    return ready[0]
