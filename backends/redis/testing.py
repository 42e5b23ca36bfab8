"""Throwaway ``redis-server`` processes for tests (cordtrio's own and users').

```python
with run_redis_server(tmp_dir) as server:      # a free 127.0.0.1 port, no persistence
    async with connect(server.url) as redis: ...

with run_redis_server(tmp_dir, appendonly=True) as server:   # AOF, fsync on every write
    server.stop()       # SIGTERM, as an operator or a container runtime would
    server.start()      # the same port, the same data directory: the data is back
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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    args: list[str] = field(default_factory=list)
    """The command line it was started with (``start`` reuses it: same port, same dir)."""
    logfile: Path | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server with SIGTERM (it finishes writing its AOF and exits) and wait."""
        _stop(self.process)

    def start(self, startup_timeout: float = 10.0) -> None:
        """Start it again after ``stop``: same port, same data directory and options, so an
        AOF server comes back with its data. Raises ``CordtrioError`` if it does not answer
        PING within ``startup_timeout`` s (the port taken meanwhile, say)."""
        if self.running:
            raise CordtrioError(f"redis-server on port {self.port} is still running")
        if not self.args:
            raise CordtrioError(f"redis-server on port {self.port}: command line unknown")
        proc = _spawn(self.args)
        problem = _wait_up(proc, self.host, self.port, startup_timeout, self.logfile)
        if problem:
            _stop(proc)
            raise CordtrioError(f"redis-server did not restart on port {self.port}: {problem}")
        self.process = proc


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
    appendonly: bool = False,
) -> Iterator[RedisServer]:
    """Start ``redis-server`` on a free port of ``host`` (no RDB, working dir ``directory``),
    wait until it answers PING, yield it, stop it on exit (also after a ``stop``/``start``).

    Without ``appendonly`` nothing is persisted; with it the server keeps an AOF in
    ``directory`` synced on every write (``--appendfsync always``), so ``stop`` + ``start``
    loses nothing that was acknowledged.

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
        args = [exe, "--port", str(port), "--bind", host, "--save", "",
                "--dir", str(Path(directory).resolve()), "--logfile", str(logfile)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else \
            ["--appendonly", "no"]
        if password:
            args += ["--requirepass", password]
        proc = _spawn(args)
        server = RedisServer(host, port, password, proc, args, logfile)
        try:
            last_error = _wait_up(proc, host, port, startup_timeout, logfile)
            if last_error:
                continue
            yield server
            return
        finally:
            _stop(server.process)
    raise CordtrioError(f"redis-server did not start: {last_error}")


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_up(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float,
             logfile: Path | None) -> str:
    """Poll PING until the server answers: "" once it does, else why it did not."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _pings(host, port):
            return ""
        time.sleep(0.02)
    log = logfile.read_text(errors="replace") if logfile and logfile.exists() else ""
    return log.strip()[-500:] or f"no PING answer within {timeout}s"


class CommandCounter:
    """Counts, client side, the Redis commands a client sends — by name, as the server's
    ``INFO commandstats`` names them (``hset``, ``multi``, ``config|resetstat``...).

    ```python
    counter = CommandCounter(redis.redis)   # redis: what connect() yielded
    counter.reset(); await engine.handle_job_result(result); print(counter.counts)
    ```

    Given the ``RedisAdapter``, it hooks its client's ``execute_command`` (every command
    method goes through it) and the pipelines the client makes (queued and immediate
    commands, plus ``MULTI``/``EXEC`` when a transaction executes), and the adapter's
    ``on_command`` (the commands a script carries as arguments: a fenced run write, a
    create). Given a bare client, only the former. Works with ``redis.asyncio.Redis`` and
    ``fakeredis``. ``close`` removes the hooks.
    """

    def __init__(self, target: Any) -> None:
        adapter = target if hasattr(target, "on_command") else None
        client = adapter.client if adapter is not None else target
        self.adapter = adapter
        self.client = client
        self.counts: Counter[str] = Counter()
        original_execute = client.execute_command
        original_pipeline = client.pipeline

        def count(args: tuple[Any, ...]) -> None:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            self.counts[name.lower().replace(" ", "|")] += 1

        async def execute_command(*args: Any, **options: Any) -> Any:
            count(args)
            return await original_execute(*args, **options)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = original_pipeline(*args, **kwargs)
            pipe_execute_command = pipe.execute_command
            pipe_execute = pipe.execute

            def pipe_command(*cargs: Any, **options: Any) -> Any:
                count(cargs)
                return pipe_execute_command(*cargs, **options)

            async def execute(*eargs: Any, **ekwargs: Any) -> Any:
                transaction = pipe.is_transaction or pipe.explicit_transaction
                if transaction and pipe.command_stack:
                    count(("MULTI",))
                    count(("EXEC",))
                return await pipe_execute(*eargs, **ekwargs)

            pipe.execute_command = pipe_command
            pipe.execute = execute
            return pipe

        client.execute_command = execute_command
        client.pipeline = pipeline
        if adapter is not None:
            adapter.on_command = count

    def reset(self) -> None:
        self.counts.clear()

    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        """Remove the hooks (the client's own methods are used again)."""
        for name in ("execute_command", "pipeline"):
            self.client.__dict__.pop(name, None)
        if self.adapter is not None:
            self.adapter.on_command = None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


__all__ = [
    "CommandCounter",
    "RedisServer",
    "RedisServerUnavailable",
    "find_redis_server",
    "free_port",
    "in_ci",
    "run_redis_server",
]
