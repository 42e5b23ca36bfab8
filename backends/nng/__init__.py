"""A bus over nng (pynng) carrying CBOR-encoded ``BusPacket``s between processes.

```python
# the engine's process hosts the router (and uses it as its own bus)
async with open_nng_router("tcp://0.0.0.0:7400", "ipc:///run/cordtrio/bus") as router:
    async with cordtrio.open_engine(store, router, payloads=payloads) as engine:
        ...

# every worker process dials it
async with open_nng_bus("tcp://engine-host:7400") as bus:
    async with cordtrio.open_worker(bus, payloads, handlers):
        ...
```

Same semantics as ``MemoryBus`` (subjects, ``>`` wildcards, fan-out to plain subscribers,
one-of-N inside a queue group, bounded buffers, at-least-once job delivery with
``consume_jobs``), over ``ipc://``, ``tcp://`` and ``tls+tcp://``; the router cuts off
clients that go silent or stop reading, and with a ``token`` admits only connections that
prove they hold it. Topology, frame format, guarantees and where a message can be
lost: ``docs/bus.md``. ``python -m cordtrio.backends.nng ADDRESS...`` runs a standalone
router.
"""

from __future__ import annotations

from .client import CONNECT_TIMEOUT, NngBus, open_nng_bus
from .frames import FrameError
from .inbox import Inbox, JobChannel
from .router import MAX_PACKET, LocalJobInbox, NngRouter, open_nng_router

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_PACKET",
    "FrameError",
    "Inbox",
    "JobChannel",
    "LocalJobInbox",
    "NngBus",
    "NngRouter",
    "open_nng_bus",
    "open_nng_router",
]
