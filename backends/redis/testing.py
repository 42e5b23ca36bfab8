"""Throwaway ``redis-server`` processes for tests (cordtrio's own and users').

```python
with run_redis_server(tmp_dir) as server:      # a free 127.0.0.1 port, no persistence
    async with connect(server.url) as redis: ...
```

Startup is the one place that waits in real time: it polls PING every 20 ms until the server
answers (or ``startup_timeout`` passes). Synchronous on purpose — call it from a (session)
fixture, not from inside ``trio.run``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cordtrio.errors import CordtrioError

CI_ENV = "CI"


class RedisServerUnavailable(CordtrioError):
    """``redis-server`` is not installed (not on ``PATH``)."""


@dataclass
class RedisServer:
    host: str
    port: int
    password: str | None
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"


def find_redis_server() -> str | None:
    """Path of ``redis-server`` on ``PATH``, or None."""
    return shutil.which("redis-server")


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``true``/``1``/``yes``): tests
    needing ``redis-server`` must then fail, not skip, when it is missing."""
    return os.environ.get(CI_ENV, "").strip().lower() in ("true", "1", "yes")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pings(host: str, port: int) -> bool:
    """True once the server answers a PING (``-NOAUTH`` counts: it is up)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))


@contextlib.contextmanager
def run_redis_server(
    directory: str | Path,
    *,
    password: str | None = None,
    host: str = "127.0.0.1",
    executable: str | None = None,
    startup_timeout: float = 10.0,
    attempts: int = 3,
) -> Iterator[RedisServer]:
    """Start ``redis-server`` on a free port of ``host`` (no RDB/AOF, working dir
    ``directory``), wait until it answers PING, yield it, stop it on exit.

    Raises ``RedisServerUnavailable`` if there is no ``redis-server`` and ``CordtrioError``
    if it does not come up (a port taken between choosing and binding is retried).
    """
    exe = executable or find_redis_server()
    if exe is None:
        raise RedisServerUnavailable("redis-server not found on PATH")
    last_error = ""
    for _ in range(attempts):
        port = free_port(host)
        logfile = Path(directory).resolve() / f"redis-{port}.log"
        args = [exe, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
                "--dir", str(Path(directory).resolve()), "--logfile", str(logfile)]
        if password:
            args += ["--requirepass", password]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if _pings(host, port):
                    break
                time.sleep(0.02)
            else:
                log = logfile.read_text(errors="replace") if logfile.exists() else ""
                last_error = log.strip()[-500:] or f"no PING answer within {startup_timeout}s"
                continue
            yield RedisServer(host, port, password, proc)
            return
        finally:
            _stop(proc)
    raise CordtrioError(f"redis-server did not start: {last_error}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


__all__ = [
    "RedisServer",
    "RedisServerUnavailable",
    "find_redis_server",
    "free_port",
    "in_ci",
    "run_redis_server",
]
