"""Reaching a deployment from the command line: the Redis URL and the connection.

``--redis URL`` (else ``$CORDTRIO_REDIS_URL``) names the Redis that holds workflows, runs and
payloads; ``--token-file PATH`` (else ``$CORDTRIO_BUS_TOKEN``) holds the nng bus token of
the commands that host or dial the bus. ``open_redis`` connects
(``cordtrio.backends.redis.connect``) and turns an unreachable server or a bad URL into a
one-line ``CliError`` naming the URL (password masked), so every process command fails the
same way.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..errors import CordtrioError
from .loading import CliError

REDIS_ENV = "CORDTRIO_REDIS_URL"
TOKEN_ENV = "CORDTRIO_BUS_TOKEN"
EXIT_UNAVAILABLE = 4
"""Exit status when Redis (or the bus) cannot be reached."""


def add_redis_argument(parser: argparse.ArgumentParser) -> None:
    """``--redis URL`` with ``$CORDTRIO_REDIS_URL`` as its default."""
    parser.add_argument("--redis", metavar="URL", default=None,
                        help=f"Redis holding workflows, runs and payloads, e.g. "
                             f"redis://127.0.0.1:6379/0 (default: ${REDIS_ENV})")


def redis_url(args: argparse.Namespace) -> str:
    """The URL from ``--redis`` or the environment; a ``CliError`` when neither is set."""
    url = getattr(args, "redis", None) or os.environ.get(REDIS_ENV, "")
    if not url:
        raise CliError(f"no Redis to talk to: pass --redis URL or set {REDIS_ENV}")
    return str(url)


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    """``--token-file PATH`` with ``$CORDTRIO_BUS_TOKEN`` as its default."""
    parser.add_argument("--token-file", metavar="PATH", default=None,
                        help=f"file holding the bus token: only processes holding it may "
                             f"use the bus (default: ${TOKEN_ENV}; neither: no token)")


def bus_token(args: argparse.Namespace) -> str | None:
    """The bus token from ``--token-file`` (surrounding whitespace stripped) or the
    environment; None when neither is set. An unreadable or empty file is a ``CliError``."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--token-file {path}: cannot read it: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise CliError(f"--token-file {path}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def is_loopback_address(address: str) -> bool:
    """True for bus addresses only this machine can reach: ``ipc://`` and ``tcp://`` on
    a loopback host (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@asynccontextmanager
async def open_redis(url: str, **options: Any) -> AsyncIterator[Any]:
    """``connect(url)`` with connection problems reported as ``CliError`` (exit status 4).

    Only errors raised while connecting are translated; errors of the block propagate.
    ``options`` go to ``connect`` (``retention_seconds``...).
    """
    try:
        from ..backends.redis import connect, mask_url
    except ImportError as exc:  # redis / trio-asyncio not installed
        raise CliError(f"the Redis backend needs extra packages (pip install "
                       f"'cordtrio[redis]'): {exc}") from None
    entered = False
    try:
        async with connect(url, **options) as backends:
            entered = True
            yield backends
    except CordtrioError as exc:
        if entered:
            raise
        message = str(exc)
        shown = mask_url(url)
        if shown not in message:
            message = f"redis {shown}: {message}"
        raise CliError(message, EXIT_UNAVAILABLE) from None


__all__ = ["EXIT_UNAVAILABLE", "REDIS_ENV", "add_redis_argument", "open_redis", "redis_url"]
