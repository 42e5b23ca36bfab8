"""Proving a connection holds the bus token, and logging that cannot be flooded.

With a token, the router's ``hello`` carries a random ``nonce``; the client answers with
``auth`` {``mac``: HMAC-SHA256(token, nonce + conn)} where ``conn`` is the connection id
of the ``hello`` as 8 big-endian bytes. The token itself never crosses the wire, and a
proof is good for one connection only. See ``docs/bus.md`` (*Security*).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

NONCE_BYTES = 32


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def proof(token: str, nonce: bytes, conn: int) -> bytes:
    """What a client sends in ``auth`` for the connection ``conn`` with ``nonce``."""
    return hmac.new(token.encode(), nonce + conn.to_bytes(8, "big", signed=False),
                    hashlib.sha256).digest()


def verify(token: str, nonce: bytes, conn: int, mac: object) -> bool:
    return isinstance(mac, bytes) and hmac.compare_digest(proof(token, nonce, conn), mac)


def check_token(who: str, token: str | None) -> None:
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"{who}: the token must be a non-empty string")


class RateLimited:
    """Log through ``logger`` at most once per ``interval`` seconds; the next line says how
    many were left out meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval
        self._skipped = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._skipped += 1
            return
        self._last = now
        if self._skipped:
            message += f" ({self._skipped} more like this not logged)"
            self._skipped = 0
        self._logger.log(level, message, *args)


__all__ = ["RateLimited", "check_token", "new_nonce", "proof", "verify"]
