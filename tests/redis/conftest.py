"""Fixtures of the Redis backend tests.

* ``redis_server`` / ``redis_password_server`` — real ``redis-server`` processes, one per
  session each, on free 127.0.0.1 ports (skipped without ``redis-server`` on ``PATH``, failed
  instead under ``CI=true``).
* ``disposable_server`` — a server of the test's own, which it may stop.
* ``aof_server`` — the same with an AOF synced on every write (in the test's temp dir), which
  it may stop and start again (``server.stop()``/``server.start()``: same port, same data).
* ``redis`` — ``connect(...)`` per test, parametrised over ``fakeredis`` (a fresh in-process
  server) and ``redis`` (the real one, flushed first); ``redis_kind`` says which.

No test here that touches the real server uses ``autojump_clock``: the asyncio loop's time
is Trio's clock, so autojump would jump it while a reply is in flight and time commands out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import fakeredis
import pytest

from cordtrio.backends.redis import RedisBackends, connect
from cordtrio.backends.redis.testing import (
    RedisServer,
    find_redis_server,
    in_ci,
    run_redis_server,
)

PASSWORD = "s3cret-Pa55"


def _require_redis_server() -> None:
    if find_redis_server() is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{message}; CI=true: the Redis tests must run")
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _require_redis_server()
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _require_redis_server()
    with run_redis_server(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD) as server:
        yield server


@pytest.fixture
def disposable_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, which the test may stop."""
    _require_redis_server()
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own with an AOF (``--appendfsync always``), restartable."""
    _require_redis_server()
    directory = tmp_path / "aof"
    directory.mkdir()
    with run_redis_server(directory, appendonly=True) as server:
        yield server


@pytest.fixture(params=["fakeredis", "redis"])
def redis_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(redis_kind: str, request: pytest.FixtureRequest) -> str:
    """The real server's URL, or ``"fakeredis"``."""
    if redis_kind == "fakeredis":
        return "fakeredis"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def fresh_fakeredis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisBackends]:
    if redis_url == "fakeredis":
        async with connect("fakeredis", client=fresh_fakeredis()) as backends:
            yield backends
        return
    async with connect(redis_url) as backends:
        await backends.redis.call("flushall", "", "flushall")
        yield backends


@pytest.fixture
async def fake_redis() -> AsyncIterator[RedisBackends]:
    """fakeredis only: for tests on Trio's autojump clock."""
    async with connect("fakeredis", client=fresh_fakeredis()) as backends:
        yield backends
