"""The ``deployment`` fixture: a fresh redis-server (skipped without one, failed under
``CI=true``), an ipc bus address, and every process the test started killed at the end."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e_harness import Deployment

from cordtrio.backends.redis.testing import find_redis_server, in_ci, run_redis_server


@contextmanager
def _deployment(directory: Path, *, appendonly: bool = False) -> Iterator[Deployment]:
    if find_redis_server() is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{message}; CI=true: the process tests must run")
        pytest.skip(message)
    # ipc paths must fit a sockaddr_un (~107 bytes): not under the (long) tmp_path
    sockets = Path(tempfile.mkdtemp(prefix="ct-"))
    with run_redis_server(directory, appendonly=appendonly) as server:
        deployment = Deployment(directory, server, f"ipc://{sockets}/bus.ipc")
        try:
            yield deployment
        finally:
            deployment.kill_all()
            shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of the test's own."""
    with _deployment(tmp_path) as d:
        yield d


@pytest.fixture
def aof_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment whose redis-server keeps an AOF (fsync on every write), so it can be
    killed and started again on the same port without losing data."""
    with _deployment(tmp_path, appendonly=True) as d:
        yield d


@pytest.fixture(scope="module")
def module_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment shared by a module's tests (process start-up is slow on 2 cores)."""
    with _deployment(tmp_path_factory.mktemp("e2e")) as d:
        yield d
