"""Fixtures of the worker tests: the memory bus both ways it delivers, a payload store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore
from cordtrio.payloads import RESULT_PREFIX, check_payload_key, key_from_pointer


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


class ThenPayloads(BytesPayloads):
    """``BytesPayloads`` whose result writes report to a callback (``put_result_then``,
    as ``RedisPayloadStore``'s), and whose job inputs are read by their pointer
    (``get_context_at``, as its): a worker's slot goes on without waiting for the write,
    and the job is reported by the callback (``Worker._stored``). The write is done by a
    task of its own, later; a write that fails hands None to the callback."""

    writes_results_then = True
    reads_contexts_at = True  # and reads a job's input by its pointer, in one call

    async def get_context_at(self, ptr: str) -> bytes:
        return await self.get_context(key_from_pointer(ptr))

    def put_result_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> bool:
        check_payload_key(key, RESULT_PREFIX)
        trio.lowlevel.spawn_system_task(self._write_then, key, data, done)
        return True

    async def _write_then(self, key: str, data: bytes, done: Callable[[Any], None]) -> None:
        try:
            await self.put_result(key, data)
        except Exception:
            done(None)
        else:
            done(True)


@pytest.fixture(params=[MemoryPayloadStore, AwaitedPayloads, BytesPayloads, ThenPayloads],
                ids=["in-process", "awaited", "bytes", "then"])
def payloads(request: pytest.FixtureRequest) -> MemoryPayloadStore:
    """A worker reads its input and stores its result in one call each when the store is
    in its process, by the awaited calls otherwise, by bytes with a store of bytes, and
    reports a result from its write's callback with a store that offers one: every worker
    test runs each way, so the ways cannot drift apart."""
    store: MemoryPayloadStore = request.param()
    return store
