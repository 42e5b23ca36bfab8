"""Fixtures of the worker tests: the memory bus both ways it delivers, a payload store."""

from __future__ import annotations

import pytest

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore


@pytest.fixture(params=[False, True], ids=["objects", "wire"])
def bus(request: pytest.FixtureRequest) -> MemoryBus:
    """Both ways the memory bus delivers: the packet object itself, or a CBOR round trip."""
    return MemoryBus(codec=request.param)


class AwaitedPayloads(MemoryPayloadStore):
    """The memory payload store without its own calls (``calls_now``): a worker awaits every
    payload call, the general path, as with a store in another process."""

    calls_now = False


class BytesPayloads(MemoryPayloadStore):
    """The memory payload store taking bytes only (``takes_json_payloads``): a worker
    encodes and decodes every payload itself, as with the Redis store."""

    takes_json_payloads = False


@pytest.fixture(params=[MemoryPayloadStore, AwaitedPayloads, BytesPayloads],
                ids=["in-process", "awaited", "bytes"])
def payloads(request: pytest.FixtureRequest) -> MemoryPayloadStore:
    """A worker reads its input and stores its result in one call each when the store is
    in its process, by the awaited calls otherwise, by bytes with a store of bytes: every
    worker test runs each way, so the ways cannot drift apart."""
    store: MemoryPayloadStore = request.param()
    return store
