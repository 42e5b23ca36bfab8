"""A real redis-server for the command-line tests (skipped without one, failed under
``CI=true``), flushed before each test that uses it; and the root logger as each test found
it (``serve`` and ``worker`` install a log handler at ``--log-level``, which would print
into later tests' stderr)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cordtrio.backends.redis.testing import (
    RedisServer,
    find_redis_server,
    in_ci,
    run_redis_server,
)


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if find_redis_server() is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{message}; CI=true: the command-line Redis tests must run")
        pytest.skip(message)
    with run_redis_server(tmp_path_factory.mktemp("cli-redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with socket.create_connection((redis_server.host, redis_server.port), timeout=5) as s:
        s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        assert s.recv(64).startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def dead_redis_url() -> str:
    """A URL on a 127.0.0.1 port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://:hunter2@127.0.0.1:{port}/0"


@pytest.fixture
def examples() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"
