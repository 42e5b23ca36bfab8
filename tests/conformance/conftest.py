"""Fixtures of the backend conformance suite: every test runs against every backend.

A backend is one entry in ``STORAGE_BACKENDS`` (store + payload store + schema registry) or
``BUS_BACKENDS``: a name and a factory returning an async context manager. Adding
``fakeredis`` or ``redis`` is one entry (plus the capabilities it has). Tests that need a
capability a backend lacks skip themselves (``storage.capabilities``/``bus_backend.
capabilities``): ``trio_clock_ttl`` — payload TTLs measured on Trio's clock, so ``MockClock``
can expire them; ``wildcard`` — ``>`` subscriptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

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
    yield BusBackend(MemoryBus(), frozenset({"wildcard"}))


@asynccontextmanager
async def memory_codec_bus() -> AsyncIterator[BusBackend]:
    yield BusBackend(MemoryBus(codec=True), frozenset({"wildcard"}))


STORAGE_BACKENDS: dict[str, StorageFactory] = {
    "memory": memory_storage,
}

BUS_BACKENDS: dict[str, BusFactory] = {
    "memory": memory_bus,
    "memory-codec": memory_codec_bus,
}


@pytest.fixture
def wall_clock() -> FakeClock:
    """The wall clock injected into the store (timestamps it fills in)."""
    return FakeClock()


@pytest.fixture(params=list(STORAGE_BACKENDS))
def storage_factory(request: pytest.FixtureRequest) -> StorageFactory:
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

