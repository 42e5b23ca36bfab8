"""In-memory backends: the store, payload store, schema registry and bus in one process.

They implement the ports of ``cordtrio.ports`` with the same observable behaviour as the
Redis/nng backends (one conformance suite runs against all of them), which makes them the
backends of tests, simulations and ``cordtrio run``.
"""

from __future__ import annotations

from .bus import MemoryBus
from .payloads import MemoryPayloadStore
from .schemas import MemorySchemaRegistry
from .store import MemoryStore

__all__ = ["MemoryBus", "MemoryPayloadStore", "MemorySchemaRegistry", "MemoryStore"]
