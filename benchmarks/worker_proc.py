"""The benchmark worker in a process of its own (backend ``redis-nng``).

    python -m benchmarks.worker_proc ADDR REDIS_URL

Dials the engine's nng router at ADDR, serves the no-op handlers with payloads in Redis,
announces itself on ``bench.worker.ready`` once its subscriptions are active, and runs until
terminated (SIGTERM ends it quietly).
"""

from __future__ import annotations

import signal
import sys

import trio

from cordtrio import BusPacket, open_worker

from .backends import READY_SUBJECT, WORKER_CONCURRENCY, connect_redis
from .workloads import HANDLERS


async def serve(address: str, redis_url: str) -> None:
    from cordtrio.backends.nng import open_nng_bus

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            connect_redis(redis_url) as redis,
            open_nng_bus(address, connect_timeout=30) as bus,
            open_worker(bus, redis.payloads, HANDLERS, max_concurrency=WORKER_CONCURRENCY),
        ):
            await bus.publish(READY_SUBJECT, BusPacket(sender_id="bench-worker"))
            async for _ in signals:
                return


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.worker_proc ADDR REDIS_URL", file=sys.stderr)
        return 2
    trio.run(serve, argv[0], argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
