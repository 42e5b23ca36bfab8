"""Fixtures of the worker tests: the memory bus both ways it delivers, a payload store."""

from __future__ import annotations

import pytest
from worker_kit import BytesPayloads, ThenPayloads

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore


@pytest.fixture(params=[False, True], ids=["objects", "wire"])
def bus(request: pytest.FixtureRequest) -> MemoryBus:
    """Both ways the memory bus delivers: the packet object itself, or a CBOR round trip."""
    return MemoryBus(codec=request.param)


class AwaitedPayloads(MemoryPayloadStore):
    """The memory payload store without its own calls (``calls_now``): a worker awaits every
    payload call, the general path, as with a store in another process."""

    calls_now = False


@pytest.fixture(params=[MemoryPayloadStore, AwaitedPayloads, BytesPayloads, ThenPayloads],
                ids=["in-process", "awaited", "bytes", "then"])
def payloads(request: pytest.FixtureRequest) -> MemoryPayloadStore:
    """A worker reads its input and stores its result in one call each when the store is
    in its process, by the awaited calls otherwise, by bytes with a store of bytes, and
    reports a result from its write's callback with a store that offers one: every worker
    test runs each way, so the ways cannot drift apart."""
    store: MemoryPayloadStore = request.param()
    return store
