"""Fixtures of the backend conformance suite: every test runs against every backend.

A backend is one entry in ``STORAGE_BACKENDS`` (store + payload store + schema registry) or
``BUS_BACKENDS``: a name and a factory returning an async context manager. Adding
``fakeredis`` or ``redis`` is one entry (plus the capabilities it has). Tests that need a
capability a backend lacks skip themselves (``storage.capabilities``/``bus_backend.
capabilities``): ``trio_clock_ttl`` — payload TTLs measured on Trio's clock, so ``MockClock``
can expire them; ``wildcard`` — ``>`` subscriptions; ``jobs`` — job queues (``consume_jobs``);
``backpressure`` — a plain subscriber with a full buffer makes ``publish`` wait (an nng
client's subscribers are remote: the router queues for them instead); ``redis`` — a Redis
store (its TTL is checked with the ``TTL`` command in ``tests/redis`` instead).

``fakeredis`` needs no server. ``redis`` uses a real ``redis-server`` started once per session
on a free 127.0.0.1 port (``STORAGE_SESSION_FIXTURES``) and flushed before each test; without
``redis-server`` on ``PATH`` its tests skip, except under ``CI=true`` where they fail. Real
Redis I/O cannot run under ``MockClock`` autojump (the clock would jump while a reply is in
flight), so ``redis`` skips tests that use ``autojump_clock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from cordtrio.backends.memory import (
    MemoryBus,
    MemoryPayloadStore,
    MemorySchemaRegistry,
    MemoryStore,
)
from cordtrio.ports import Bus, Clock, PayloadStore, SchemaRegistry, Store


class FakeClock:
    """Wall clock under the test's control: starts at 2030-01-01 UTC, moves by ``advance``."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@dataclass
class Storage:
    """What a storage backend provides, and which optional behaviours it supports."""

    store: Store
    payloads: PayloadStore
    schemas: SchemaRegistry
    capabilities: frozenset[str] = field(default_factory=frozenset)


@dataclass
class BusBackend:
    bus: Bus
    capabilities: frozenset[str] = field(default_factory=frozenset)


StorageFactory = Callable[[Clock], AbstractAsyncContextManager[Storage]]
BusFactory = Callable[[], AbstractAsyncContextManager[BusBackend]]


@asynccontextmanager
async def memory_storage(clock: Clock) -> AsyncIterator[Storage]:
    yield Storage(
        store=MemoryStore(clock=clock),
        payloads=MemoryPayloadStore(),
        schemas=MemorySchemaRegistry(),
        capabilities=frozenset({"trio_clock_ttl"}),
    )


@asynccontextmanager
async def memory_bus() -> AsyncIterator[BusBackend]:
    yield BusBackend(MemoryBus(), frozenset({"wildcard", "jobs", "backpressure"}))


@asynccontextmanager
async def memory_codec_bus() -> AsyncIterator[BusBackend]:
    yield BusBackend(MemoryBus(codec=True),
                     frozenset({"wildcard", "jobs", "backpressure"}))


@asynccontextmanager
async def nng_bus() -> AsyncIterator[BusBackend]:
    """A client of an nng router on a private ``ipc://`` path (real sockets)."""
    import pynng  # noqa: F401  (a test dependency: fail, never skip, when missing)

    from cordtrio.backends.nng.testing import open_loopback

    async with open_loopback("ipc") as (_router, client):
        yield BusBackend(client, frozenset({"wildcard", "jobs"}))


@asynccontextmanager
async def fakeredis_storage(clock: Clock) -> AsyncIterator[Storage]:
    import fakeredis

    from cordtrio.backends.redis import connect

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())  # a fresh, empty server
    async with connect("fakeredis", client=client, clock=clock) as r:
        yield Storage(r.store, r.payloads, r.schemas, capabilities=frozenset({"redis"}))


_REDIS_SERVER: dict[str, str] = {}  # "url" of the session's redis-server, once started


@asynccontextmanager
async def redis_storage(clock: Clock) -> AsyncIterator[Storage]:
    from cordtrio.backends.redis import connect

    current = trio.lowlevel.current_clock()
    if isinstance(current, trio.testing.MockClock) and current.autojump_threshold != float("inf"):
        pytest.skip("real Redis I/O cannot run under MockClock autojump")
    async with connect(_REDIS_SERVER["url"], clock=clock) as r:
        await r.redis.call("flushall", "", "flushall")
        yield Storage(r.store, r.payloads, r.schemas, capabilities=frozenset({"redis"}))


STORAGE_BACKENDS: dict[str, StorageFactory] = {
    "memory": memory_storage,
    "fakeredis": fakeredis_storage,
    "redis": redis_storage,
}

STORAGE_SESSION_FIXTURES: dict[str, str] = {"redis": "redis_server_url"}
"""Backends that need a session fixture (a server) before their factory can run."""

BUS_BACKENDS: dict[str, BusFactory] = {
    "memory": memory_bus,
    "memory-codec": memory_codec_bus,
    "nng": nng_bus,
}


@pytest.fixture
def wall_clock() -> FakeClock:
    """The wall clock injected into the store (timestamps it fills in)."""
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``redis-server`` for the whole session; skips (fails under ``CI=true``) without one."""
    from cordtrio.backends.redis.testing import find_redis_server, in_ci, run_redis_server

    if find_redis_server() is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{message}; CI=true: the Redis conformance tests must run")
        pytest.skip(message)
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        _REDIS_SERVER["url"] = server.url
        try:
            yield server.url
        finally:
            _REDIS_SERVER.pop("url", None)


@pytest.fixture(params=list(STORAGE_BACKENDS))
def storage_factory(request: pytest.FixtureRequest) -> StorageFactory:
    needs = STORAGE_SESSION_FIXTURES.get(request.param)
    if needs:
        request.getfixturevalue(needs)
    return STORAGE_BACKENDS[request.param]


@pytest.fixture
async def storage(
    storage_factory: StorageFactory, wall_clock: FakeClock
) -> AsyncIterator[Storage]:
    async with storage_factory(wall_clock) as backends:
        yield backends


@pytest.fixture
def store(storage: Storage) -> Store:
    return storage.store


@pytest.fixture
def payloads(storage: Storage) -> PayloadStore:
    return storage.payloads


@pytest.fixture
def schemas(storage: Storage) -> SchemaRegistry:
    return storage.schemas


@pytest.fixture(params=list(BUS_BACKENDS))
async def bus_backend(request: pytest.FixtureRequest) -> AsyncIterator[BusBackend]:
    async with BUS_BACKENDS[request.param]() as backend:
        yield backend


@pytest.fixture
def bus(bus_backend: BusBackend) -> Bus:
    return bus_backend.bus


@pytest.fixture
def job_bus(bus_backend: BusBackend) -> Bus:
    """A bus backend that delivers jobs at least once (SPEC §13): every one of them."""
    assert "jobs" in bus_backend.capabilities, "every bus backend must deliver jobs"
    return bus_backend.bus

