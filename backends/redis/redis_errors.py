"""What can go wrong with Redis, told apart and translated into cordtrio's errors.

``RedisAdapter`` and the batcher catch ``BACKEND_ERRORS`` (anything else is a bug and
propagates), ride out what ``is_disconnect`` says is a lost connection, and give up with
``translate``'s error: ``RedisDataError`` (not transient) for a value cordtrio did not
write (``WRONGTYPE``) or cannot encode, ``StoreError`` (transient) for the rest, naming the
URL with its password masked (``mask_url``) and scrubbed from the server's text.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.exceptions as rx

from cordtrio.errors import CordtrioError, CorruptDataError, StoreError


class RedisDataError(CorruptDataError):
    """The value under a Redis key is not what cordtrio stores there: corrupt JSON, a missing
    part, or a key of the wrong Redis type. The message names the key. Not transient."""


def mask_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password=`` query item) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = "&".join(
        (item.split("=", 1)[0] + "=***") if item.lower().startswith("password=") else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The password(s) in ``url``, to be scrubbed from any message that might echo them."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out: list[str] = []
    if parts.password:
        out += [parts.password, unquote(parts.password)]
    for item in parts.query.split("&"):
        if item.lower().startswith("password="):
            value = item.split("=", 1)[1]
            out += [value, unquote(value)]
    return [s for s in out if s]


# What the client and its loop raise for backend trouble. Anything else (a TypeError...) is a
# bug and propagates unchanged rather than being retried forever as "transient".
BACKEND_ERRORS = (rx.RedisError, OSError, asyncio.TimeoutError, RuntimeError, EOFError)


# Errors that are not a lost connection although redis-py files them under ConnectionError:
# retrying a wrong password or a missing permission cannot help.
_NOT_A_DISCONNECT = (rx.AuthenticationError, rx.AuthorizationError,
                     rx.ExternalAuthProviderError)


def is_wrongtype(exc: BaseException) -> bool:
    return isinstance(exc, rx.ResponseError) and "WRONGTYPE" in str(exc)


def is_disconnect(exc: BaseException) -> bool:
    """True for a connection that is down (refused, reset, closed, the server still loading
    its data, the pool exhausted): worth waiting for. False for timeouts and auth errors."""
    if isinstance(exc, _NOT_A_DISCONNECT):
        return False
    return isinstance(exc, rx.ConnectionError | ConnectionError)


def translate(exc: BaseException, what: str, key: str, url: str,
              secrets: list[str]) -> CordtrioError:
    """The cordtrio error for a redis-py/asyncio/OS exception of ``what`` on ``key``
    (``url``: masked already; ``secrets``: ``url_secrets`` of the real one, scrubbed from
    the exception's text)."""
    if isinstance(exc, CordtrioError):
        return exc
    text = str(exc) or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    if is_wrongtype(exc):
        return RedisDataError(
            f"redis key {key!r} holds the wrong kind of value for {what} ({text})"
        )
    if isinstance(exc, rx.DataError):
        return RedisDataError(f"redis key {key!r}: {what}: cannot encode value ({text})")
    return StoreError(f"redis {url}: {what}: {type(exc).__name__}: {text}")


__all__ = ["BACKEND_ERRORS", "RedisDataError", "is_disconnect", "is_wrongtype", "mask_url",
           "translate", "url_secrets"]
