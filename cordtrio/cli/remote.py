"""Reaching a deployment from the command line: the Redis URL and the connection.

``--redis URL`` (else ``$CORDTRIO_REDIS_URL``) names the Redis that holds workflows, runs and
payloads. ``open_redis`` connects (``cordtrio.backends.redis.connect``) and turns an
unreachable server or a bad URL into a one-line ``CliError`` naming the URL (password
masked), so every process command fails the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..errors import CordtrioError
from .loading import CliError

REDIS_ENV = "CORDTRIO_REDIS_URL"
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
