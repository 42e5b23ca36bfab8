"""Fixtures of the worker tests: the memory bus both ways it delivers, a payload store."""

from __future__ import annotations

import pytest

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore


@pytest.fixture(params=[False, True], ids=["objects", "wire"])
def bus(request: pytest.FixtureRequest) -> MemoryBus:
    """Both ways the memory bus delivers: the packet object itself, or a CBOR round trip."""
    return MemoryBus(codec=request.param)


@pytest.fixture
def payloads() -> MemoryPayloadStore:
    return MemoryPayloadStore()
