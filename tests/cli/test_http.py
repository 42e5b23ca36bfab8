"""The tiny HTTP server behind ``/health`` and ``/metrics``, over real loopback sockets."""

from __future__ import annotations

import pytest
import trio

from cordtrio.cli.http import Response, parse_address, parse_request_line, serve_http


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    (":0", ("127.0.0.1", 0)),
    ("9100", ("127.0.0.1", 9100)),
    ("[::1]:80", ("::1", 80)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:port", "1:99999"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_address(text)


def test_parse_request_line() -> None:
    assert parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n") == (
        "GET", "/metrics")
    assert parse_request_line(b"hello\r\n\r\n") is None


async def _request(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_routes_methods_and_errors() -> None:
    async def health() -> Response:
        return Response(200, b'{"status": "ok"}', "application/json")

    async def broken() -> Response:
        raise RuntimeError("boom")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, "127.0.0.1", 0,
                                       {"/health": health, "/broken": broken})
            assert port > 0
            ok = await _request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Content-Type: application/json" in ok
            assert ok.endswith(b'\r\n\r\n{"status": "ok"}')
            head = await _request(port, b"HEAD /health HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            assert (await _request(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 404")
            assert (await _request(port, b"POST /health HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 405")
            assert (await _request(port, b"GET /broken HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 500")
            assert (await _request(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
            nursery.cancel_scope.cancel()
