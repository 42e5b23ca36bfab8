"""``cordtrio serve``: the engine as a long-running service.

One process hosts the nng bus router (``--listen``, the address workers dial), opens an
engine over the Redis store, payload store and schema registry with the router as its bus,
resumes the runs it finds in Redis (those no live engine holds a lease on), applies the
commands ``cordtrio runs`` queues in Redis, and serves ``/health`` and ``/metrics`` on a
loopback HTTP port (``--http``). SIGINT or SIGTERM stop it cleanly: run tasks are
cancelled, nothing is marked failed, leases are released, and the next ``serve`` resumes
every run from Redis. Exit status: 0 after a signal, 2 bad usage, 4 Redis unreachable or
an address unusable, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..engine import open_engine
from ..errors import CordtrioError
from ..model import RunStatus
from .http import Response, parse_address, serve_http
from .loading import EXIT_OK, CliError
from .metrics import ServeMetrics, bus_figures
from .process import Shutdown, on_signals, run_trio
from .remote import (
    EXIT_UNAVAILABLE,
    TOKEN_ENV,
    add_redis_argument,
    add_token_argument,
    bus_token,
    is_loopback_address,
    open_redis,
    redis_url,
)

STATUS_COUNT_CAP = 100_000
"""``cordtrio_runs`` counts at most this many runs per status (one ZRANGE each)."""

HEALTH_TIMEOUT = 2.0


@dataclass
class ServeOptions:
    redis_url: str
    listen: list[str]
    http: tuple[str, int] | None
    lease_ttl: float | None = None
    engine_id: str = ""
    token: str | None = None


def add_parser(commands: Any) -> None:
    """Register ``cordtrio serve``."""
    p = commands.add_parser(
        "serve", help="run the engine as a service (Redis store, nng bus router)",
        description="Run the engine over Redis, hosting the nng bus router workers dial. "
                    "Stops cleanly on SIGINT/SIGTERM; runs stay resumable in Redis.",
        epilog="Exit status: 0 stopped by a signal, 1 crashed, 2 usage error, "
               "4 Redis unreachable or listen address unusable.")
    add_redis_argument(p)
    p.add_argument("--listen", action="append", required=True, metavar="ADDR",
                   help="bus address to listen on: ipc:///path or tcp://HOST:PORT "
                        "(repeatable)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve /health and /metrics here (port 0: any free port; the "
                        "bound address is printed)")
    p.add_argument("--lease-ttl", type=float, metavar="SECONDS",
                   help="seconds a run stays owned by an engine that stopped renewing its "
                        "lease (a crashed one) before another engine takes it over "
                        "(default 15)")
    p.add_argument("--engine-id", metavar="ID", default="",
                   help="this engine's name as a lease owner (default: random)")
    add_token_argument(p)
    p.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback tcp:// address without a bus "
                        "token (anyone who can reach it can then use the bus)")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    for address in args.listen:
        if not address.startswith(("ipc://", "tcp://")):
            raise CliError(f"--listen {address!r}: expected ipc:///path or tcp://HOST:PORT")
    http = None
    if args.http:
        try:
            http = parse_address(args.http)
        except ValueError as exc:
            raise CliError(f"--http: {exc}") from None
    lease_ttl = args.lease_ttl
    if lease_ttl is not None and lease_ttl <= 0:
        raise CliError("--lease-ttl must be positive")
    token = bus_token(args)
    if token is None and not args.insecure:
        for address in args.listen:
            if not is_loopback_address(address):
                raise CliError(f"--listen {address}: a bus other machines can reach needs a "
                               f"token (--token-file PATH or ${TOKEN_ENV}); pass --insecure "
                               "to listen without one")
    options = ServeOptions(redis_url(args), list(args.listen), http, lease_ttl,
                           args.engine_id, token)
    return run_trio(serve, options)


async def serve(options: ServeOptions) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit status."""
    async with (
        on_signals(_say) as shutdown,
        open_redis(options.redis_url) as redis,
        _open_router(options.listen, options.token) as router,
    ):
        await _run_engine(options, redis, router, shutdown)
    _say("stopped; runs stay resumable in Redis")
    return EXIT_OK


@asynccontextmanager
async def _open_router(listen: list[str], token: str | None) -> AsyncIterator[Any]:
    """The nng router on ``listen``; an unusable address is a ``CliError`` (status 4)."""
    from ..backends.nng import open_nng_router

    entered = False
    try:
        async with open_nng_router(*listen, token=token) as router:
            entered = True
            yield router
    except CordtrioError as exc:
        if entered:
            raise
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None


async def _run_engine(options: ServeOptions, redis: Any, router: Any,
                      shutdown: Shutdown) -> None:
    metrics = ServeMetrics(trio.current_time)
    extra: dict[str, Any] = {}
    if options.lease_ttl is not None:
        extra["lease_ttl"] = options.lease_ttl
    if options.engine_id:
        extra["engine_id"] = options.engine_id
    async with trio.open_nursery() as nursery:
        state: dict[str, Any] = {"engine": None}
        if options.http is not None:
            host, port = options.http
            routes = {"/health": lambda: _health(redis, state),
                      "/metrics": lambda: _metrics(redis, state, metrics, router)}
            try:
                bound = await nursery.start(serve_http, host, port, routes)
            except OSError as exc:
                raise CliError(f"--http {host}:{port}: cannot listen: {exc.strerror or exc}",
                               EXIT_UNAVAILABLE) from None
            _say(f"http listening on http://{host}:{bound}/ (/health, /metrics)")
        async with open_engine(redis.store, router, payloads=redis.payloads,
                               schemas=redis.schemas,
                               on_step_dispatched=metrics.step_dispatched,
                               on_step_finished=metrics.step_finished,
                               recover=True, **extra) as engine:
            state["engine"] = engine
            _say(f"ready: engine {engine.engine_id}, bus {', '.join(router.urls)}, "
                 f"redis {redis.url}, {engine.active_runs} run(s) resumed")
            shutdown.ready()
            await shutdown.wait()
        nursery.cancel_scope.cancel()  # the HTTP server


async def _redis_up(redis: Any) -> bool:
    with trio.move_on_after(HEALTH_TIMEOUT):
        try:
            await redis.redis.call("health check", "", "ping")
        except CordtrioError:
            return False
        return True
    return False


async def _health(redis: Any, state: dict[str, Any]) -> Response:
    up = await _redis_up(redis)
    engine = state["engine"]
    body = {"status": "ok" if up else "unavailable", "redis": "up" if up else "down",
            "engine": "ready" if engine is not None else "starting",
            "active_runs": engine.active_runs if engine is not None else 0}
    return Response(200 if up else 503, (json.dumps(body) + "\n").encode(),
                    "application/json")


async def _metrics(redis: Any, state: dict[str, Any], metrics: ServeMetrics,
                   router: Any) -> Response:
    up = await _redis_up(redis)
    counts: dict[str, int] = {}
    if up:
        for status in RunStatus:
            try:
                ids = await redis.store.list_run_ids_by_status(status.value, STATUS_COUNT_CAP)
            except CordtrioError:
                continue
            counts[status.value] = len(ids)
    engine = state["engine"]
    text = metrics.render(counts, engine.active_runs if engine is not None else 0, up,
                          bus_figures(router))
    return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


def _say(message: str) -> None:
    print(f"cordtrio serve: {message}", flush=True)


__all__ = ["ServeOptions", "add_parser", "run_serve", "serve"]
