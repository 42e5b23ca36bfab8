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
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..engine import open_engine
from ..errors import CordtrioError
from ..model import RunStatus
from ..retry import calls_waiting
from .http import Response, parse_address, serve_http
from .loading import EXIT_OK, CliError
from .logs import add_log_level_argument, configure_logging
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
    retention_seconds: float = 7 * 86400.0
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
    p.add_argument("--retention", metavar="DURATION", default="7d",
                   help="how long finished runs (with their timelines and idempotency "
                        "keys) are kept in Redis: e.g. 7d, 12h, 30m, 3600s; 0 keeps them "
                        "forever (default 7d)")
    p.add_argument("--engine-id", metavar="ID", default="",
                   help="this engine's name as a lease owner (default: random)")
    add_log_level_argument(p)
    add_token_argument(p)
    p.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback tcp:// address without a bus "
                        "token (anyone who can reach it can then use the bus)")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
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
    try:
        retention = parse_duration(args.retention)
    except ValueError as exc:
        raise CliError(f"--retention: {exc}") from None
    token = bus_token(args)
    if token is None and not args.insecure:
        for address in args.listen:
            if not is_loopback_address(address):
                raise CliError(f"--listen {address}: a bus other machines can reach needs a "
                               f"token (--token-file PATH or ${TOKEN_ENV}); pass --insecure "
                               "to listen without one")
    options = ServeOptions(redis_url(args), list(args.listen), http, lease_ttl,
                           args.engine_id, retention, token)
    return run_trio(serve, options)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` or plain seconds → seconds (``0``: none).
    Raises ``ValueError`` naming the text."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: expected e.g. 7d, 12h, 30m, 90s or 0"
                         ) from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"bad duration {text!r}: must be 0 or positive")
    return value


async def serve(options: ServeOptions) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit status."""
    async with (
        on_signals(_say) as shutdown,
        open_redis(options.redis_url,
                   retention_seconds=options.retention_seconds or None) as redis,
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


async def _check_persistence(redis: Any) -> Any:
    """Warn (one line on stderr) when Redis keeps nothing across a restart."""
    from ..backends.redis.persistence import check_persistence

    found = await check_persistence(redis.redis)
    if found.keeps_data is False:
        _warn(f"Redis at {redis.url} keeps nothing across a restart (appendonly no, "
              "no RDB snapshots): a Redis restart loses every run, workflow and queued "
              "command. Start it with --appendonly yes (see docs/processes.md)")
    elif found.keeps_data is None:
        _say(f"could not check whether Redis keeps its data ({found.problem}); make sure "
             "it runs with --appendonly yes")
    return found


async def _run_engine(options: ServeOptions, redis: Any, router: Any,
                      shutdown: Shutdown) -> None:
    metrics = ServeMetrics(trio.current_time)
    persistence = await _check_persistence(redis)
    extra: dict[str, Any] = {}
    if options.lease_ttl is not None:
        extra["lease_ttl"] = options.lease_ttl
    if options.engine_id:
        extra["engine_id"] = options.engine_id
    async with trio.open_nursery() as nursery:
        state: dict[str, Any] = {"engine": None}
        if options.http is not None:
            host, port = options.http
            routes = {"/health": lambda: _health(redis, state, persistence),
                      "/metrics": lambda: _metrics(redis, state, metrics, persistence,
                                                   router)}
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
            kept = (f"finished runs kept {options.retention_seconds:g}s"
                    if options.retention_seconds else "finished runs kept forever")
            _say(f"ready: engine {engine.engine_id}, bus {', '.join(router.urls)}, "
                 f"redis {redis.url}, {engine.active_runs} run(s) resumed at start-up, "
                 f"{kept}")
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


async def _health(redis: Any, state: dict[str, Any], persistence: Any) -> Response:
    up = await _redis_up(redis)
    engine = state["engine"]
    waiting = calls_waiting()  # writes and reads waiting out a store outage
    status = "unavailable" if not up else "degraded" if waiting else "ok"
    body = {"status": status, "redis": "up" if up else "down", "waiting_calls": waiting,
            "engine": "ready" if engine is not None else "starting",
            "active_runs": engine.active_runs if engine is not None else 0,
            "persistence": persistence.mode}
    return Response(200 if up else 503, (json.dumps(body) + "\n").encode(),
                    "application/json")


async def _metrics(redis: Any, state: dict[str, Any], metrics: ServeMetrics,
                   persistence: Any, router: Any) -> Response:
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
                          persistence.keeps_data, bus_figures(router))
    return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


log = logging.getLogger("cordtrio.serve")


def _say(message: str) -> None:
    log.info("%s", message)


def _warn(message: str) -> None:
    print(f"cordtrio serve: WARNING: {message}", file=sys.stderr, flush=True)


__all__ = ["ServeOptions", "add_parser", "parse_duration", "run_serve", "serve"]
