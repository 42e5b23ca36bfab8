"""A tiny HTTP/1.1 server on Trio sockets for ``cordtrio serve``'s ``/health`` and ``/metrics``.

GET (and HEAD) only, one request per connection (``Connection: close``), request heads up to
8 KiB read within ``REQUEST_TIMEOUT`` seconds. Enough for probes and a Prometheus scraper;
not a general web server, so it should listen on a loopback or private address.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

log = logging.getLogger("cordtrio.serve.http")

MAX_HEAD = 8192
REQUEST_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, or ``PORT``) → (host, port); the host defaults to
    127.0.0.1. Raises ``ValueError`` naming the text."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad HTTP address {text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"bad HTTP address {text!r}: port out of range")
    return host, number


def render_response(response: Response, head_only: bool = False) -> bytes:
    reason = REASONS.get(response.status, "Unknown")
    head = (f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + response.body


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, path without query) of a request head, or None if it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    return parts[0], parts[1].split("?", 1)[0]


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_HEAD:
            return None
    return data


async def _respond(stream: trio.SocketStream, routes: Mapping[str, Route]) -> None:
    with trio.move_on_after(REQUEST_TIMEOUT):
        head = await _read_head(stream)
        request = parse_request_line(head) if head is not None else None
        if request is None:
            await stream.send_all(render_response(Response(400, b"bad request\n")))
            return
        method, path = request
        route = routes.get(path)
        if route is None:
            response = Response(404, b"not found\n")
        elif method not in ("GET", "HEAD"):
            response = Response(405, b"only GET\n")
        else:
            try:
                response = await route()
            except Exception:
                log.exception("GET %s failed", path)
                response = Response(500, b"internal error\n")
        await stream.send_all(render_response(response, head_only=method == "HEAD"))


async def serve_http(host: str, port: int, routes: Mapping[str, Route], *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``routes`` (path → coroutine returning a ``Response``) on ``host:port`` until
    cancelled; ``task_status.started`` reports the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _respond(stream, routes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    bound = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


__all__ = ["Response", "Route", "parse_address", "render_response", "serve_http"]
