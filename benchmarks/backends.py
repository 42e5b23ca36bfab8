"""The backends a workload runs on: an engine with a worker serving ``HANDLERS`` behind it.

* ``memory``: MemoryStore, MemoryBus, MemoryPayloadStore, the worker in-process.
* ``redis``: RedisStore and RedisPayloadStore on the harness's redis-server, a MemoryBus,
  the worker in-process.
* ``redis-nng``: Redis as above; the engine hosts an nng router (tcp on 127.0.0.1) and the
  worker runs in another process (``python -m benchmarks.worker_proc ADDR REDIS_URL``),
  sharing the payloads through Redis.

Each sample opens a fresh session (a new engine, worker and connection) on a flushed server,
so repetitions do not inherit each other's runs.

Redis connections: ``connect``'s own blocking pool (commands beyond its connections wait
for one), as a deployment uses it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from cordtrio import Engine, Workflow, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore

from .workloads import HANDLERS, Probe

BACKENDS = ("memory", "redis", "redis-nng")
NEEDS_REDIS = frozenset({"redis", "redis-nng"})
WORKER_CONCURRENCY = 256
READY_SUBJECT = "bench.worker.ready"
WORKER_START_TIMEOUT = 60.0


@dataclass
class Hooks:
    """The engine's step hooks (latency recording and progress)."""

    dispatched: Callable[[str, str, str], Any]
    finished: Callable[[str, str, Any], Any]


@dataclass
class Session:
    engine: Engine
    probe: Probe
    worker_pid: int | None = None
    """The worker's own process, when it has one (``redis-nng``)."""


@asynccontextmanager
async def open_session(backend: str, workflow: Workflow, hooks: Hooks, *,
                       redis_url: str | None = None,
                       server_memory: Callable[[], int] | None = None,
                       ) -> AsyncIterator[Session]:
    """Open ``backend`` with ``workflow`` saved and a worker ready; yield the engine."""
    if backend == "memory":
        async with _memory(workflow, hooks) as session:
            yield session
        return
    if backend not in NEEDS_REDIS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if redis_url is None:
        raise ValueError(f"backend {backend!r} needs a redis-server URL")
    async with connect_redis(redis_url) as redis:
        await redis.store.save_workflow(workflow)
        probe = Probe(server_memory=server_memory)
        if backend == "redis":
            bus = MemoryBus()
            async with (
                open_engine(redis.store, bus, payloads=redis.payloads, schemas=redis.schemas,
                            on_step_dispatched=hooks.dispatched,
                            on_step_finished=hooks.finished) as engine,
                open_worker(bus, redis.payloads, HANDLERS, max_concurrency=WORKER_CONCURRENCY),
            ):
                yield Session(engine, probe)
        else:
            async with (
                _nng_worker(redis_url) as (router, worker_pid),
                open_engine(redis.store, router, payloads=redis.payloads, schemas=redis.schemas,
                            on_step_dispatched=hooks.dispatched,
                            on_step_finished=hooks.finished) as engine,
            ):
                yield Session(engine, probe, worker_pid)


@asynccontextmanager
async def connect_redis(url: str) -> AsyncIterator[Any]:
    """``cordtrio.backends.redis.connect`` (imported only when a Redis backend is used)."""
    from cordtrio.backends.redis import connect  # optional dependency

    async with connect(url) as redis:
        yield redis


@asynccontextmanager
async def _memory(workflow: Workflow, hooks: Hooks) -> AsyncIterator[Session]:
    store, bus, payloads = MemoryStore(), MemoryBus(), MemoryPayloadStore()
    await store.save_workflow(workflow)
    async with (
        open_engine(store, bus, payloads=payloads, on_step_dispatched=hooks.dispatched,
                    on_step_finished=hooks.finished) as engine,
        open_worker(bus, payloads, HANDLERS, max_concurrency=WORKER_CONCURRENCY),
    ):
        yield Session(engine, Probe())


@asynccontextmanager
async def _nng_worker(redis_url: str) -> AsyncIterator[tuple[Any, int]]:
    """An nng router on a free 127.0.0.1 port and a worker process dialled into it, ready
    (its subscriptions active) when the body starts: the router and the worker's pid. The
    process is stopped on exit."""
    from cordtrio.backends.nng import open_nng_router  # optional dependency
    from cordtrio.backends.redis.testing import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    async with open_nng_router(address) as router, router.subscribe(READY_SUBJECT) as ready:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "benchmarks.worker_proc", address, redis_url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            with trio.fail_after(WORKER_START_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_fail_if_exits, proc, nursery.cancel_scope)
                    await ready.receive()
                    nursery.cancel_scope.cancel()
            yield router, proc.pid
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)


async def _fail_if_exits(proc: trio.Process, scope: trio.CancelScope) -> None:
    code = await proc.wait()
    raise RuntimeError(f"benchmark worker process exited with code {code} before it was ready")


async def _stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    with trio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
