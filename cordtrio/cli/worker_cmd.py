"""``cordtrio worker``: serve handlers for a ``cordtrio serve`` engine from another process.

The worker dials the engine's bus router (``--connect``), reads job inputs from and writes
results to the Redis payload store (``--redis``), and runs the handlers of ``--handlers``
(``module[:attr]``, as for ``cordtrio run``) at most ``--concurrency`` at a time. Workers
with the same handler topics share a queue group, so each job goes to one of them.
SIGINT/SIGTERM stop it: running handlers are cancelled without a result (the engine's step
timeouts and retries take care of them) and queued jobs are handed back to the group.
Exit status: 0 after a signal, 2 usage or handlers problem, 4 Redis or the bus unreachable.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from ..errors import CordtrioError
from ..worker import DEFAULT_PREFETCH, Handler, default_queue, open_worker
from .loading import EXIT_OK, CliError, load_handlers
from .logs import add_log_level_argument, configure_logging
from .process import on_signals, run_trio
from .remote import (
    EXIT_UNAVAILABLE,
    add_redis_argument,
    add_token_argument,
    bus_token,
    open_redis,
    redis_url,
)

CONNECT_TIMEOUT = 10.0


def add_parser(commands: Any) -> None:
    """Register ``cordtrio worker``."""
    p = commands.add_parser(
        "worker", help="serve job handlers for a `cordtrio serve` engine",
        description="Dial the engine's bus and run the handlers of a module for its jobs. "
                    "Stops cleanly on SIGINT/SIGTERM.",
        epilog="Exit status: 0 stopped by a signal, 1 crashed, 2 usage or handlers error, "
               "4 Redis or the bus unreachable.")
    add_redis_argument(p)
    p.add_argument("--connect", required=True, metavar="ADDR",
                   help="the bus address `cordtrio serve --listen` uses")
    p.add_argument("--handlers", required=True, metavar="module[:attr]",
                   help="module whose HANDLERS (or attr) maps topic -> async handler")
    p.add_argument("--concurrency", type=int, default=64, metavar="N",
                   help="handlers running at once (default 64)")
    p.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH, metavar="N",
                   help="jobs held beyond --concurrency so a finished slot finds its next "
                        f"job waiting (default {DEFAULT_PREFETCH})")
    p.add_argument("--worker-id", default="", metavar="ID",
                   help="this worker's id in results (default: random)")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="S",
                   help=f"give up if the bus is not reachable within S seconds "
                        f"(default {CONNECT_TIMEOUT:g})")
    add_log_level_argument(p)
    add_token_argument(p)
    p.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    if args.prefetch < 0:
        raise CliError("--prefetch must be at least 0")
    if not args.connect.startswith(("ipc://", "tcp://")):
        raise CliError(f"--connect {args.connect!r}: expected ipc:///path or tcp://HOST:PORT")
    url = redis_url(args)
    token = bus_token(args)
    handlers = load_handlers(args.handlers)
    if not handlers:
        raise CliError(f"--handlers {args.handlers}: no handlers in it")
    return run_trio(_work, args, url, handlers, token)


async def _work(args: argparse.Namespace, url: str, handlers: Mapping[str, Handler],
                token: str | None) -> int:
    async with (
        on_signals(_say) as shutdown,
        open_redis(url) as redis,
        _open_bus(args.connect, args.connect_timeout, token) as bus,
        open_worker(bus, redis.payloads, handlers, worker_id=args.worker_id,
                    max_concurrency=args.concurrency, prefetch=args.prefetch) as worker,
    ):
        _say(f"ready: {worker.worker_id} on {args.connect}, queue "
             f"{default_queue(handlers)!r}, topics {', '.join(sorted(handlers))}")
        shutdown.ready()
        await shutdown.wait()
    return EXIT_OK


@asynccontextmanager
async def _open_bus(address: str, timeout: float, token: str | None) -> AsyncIterator[Any]:
    from ..backends.nng import open_nng_bus

    entered = False
    try:
        async with open_nng_bus(address, connect_timeout=timeout, token=token) as bus:
            entered = True
            yield bus
    except CordtrioError as exc:
        if entered:
            raise
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None


log = logging.getLogger("cordtrio.worker")


def _say(message: str) -> None:
    log.info("%s", message)


__all__ = ["add_parser", "run_worker"]
