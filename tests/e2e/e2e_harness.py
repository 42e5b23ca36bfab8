"""The harness of the process-mode tests: real ``cordtrio serve``, ``cordtrio worker`` and
``cordtrio runs ...`` processes (``sys.executable -m cordtrio``) next to a real redis-server.

``Deployment`` starts processes with their output in files, waits (bounded, real time) for
what they print, runs commands to completion and reads the handlers' execution records
(``e2e_handlers.py``). ``conftest.deployment`` builds one per test and kills what it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from cordtrio.backends.redis import connect
from cordtrio.backends.redis.testing import RedisServer
from cordtrio.client import Client

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
HANDLERS = str(Path(__file__).with_name("e2e_handlers.py"))
WORKFLOWS = Path(__file__).with_name("workflows")


@dataclass
class Proc:
    """A started process whose output goes to ``<name>.out`` in the test's directory."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """Wait until ``text`` appears in the output; fail (with the output) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            if text in output:
                return output
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.popen.returncode} before "
                            f"printing {text!r}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"{self.name} did not print {text!r} within {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            pytest.fail(f"{self.name} did not exit within {timeout}s of signal {sig}:\n"
                        f"{self.output()}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=5)


@dataclass
class Deployment:
    directory: Path
    redis: RedisServer
    bus: str
    procs: list[Proc] = field(default_factory=list)
    records: Path = field(init=False)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def __post_init__(self) -> None:
        self.records = self.directory / "records"
        self.records.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("COLUMNS", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        env["CORDTRIO_REDIS_URL"] = self.redis_url
        env["CORDTRIO_E2E_DIR"] = str(self.records)
        env.update(extra)
        return env

    def start(self, name: str, *args: str, **env: str) -> Proc:
        out = self.directory / f"{name}.out"
        with open(out, "wb") as f:
            popen = subprocess.Popen([sys.executable, "-m", "cordtrio", *args],
                                     stdin=subprocess.DEVNULL, stdout=f,
                                     stderr=subprocess.STDOUT, env=self.env(**env),
                                     cwd=self.directory)
        proc = Proc(name, popen, out)
        self.procs.append(proc)
        return proc

    def http_port(self, serve: Proc) -> int:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", serve.output())
        assert match, serve.output()
        return int(match.group(1))

    def serve(self, name: str = "serve", *extra: str, wait: bool = True) -> Proc:
        """Start ``cordtrio serve`` (and wait for its ``ready:`` line)."""
        proc = self.start(name, "serve", "--listen", self.bus, "--http", "127.0.0.1:0",
                          *extra)
        if wait:
            proc.wait_for("ready:", timeout=30)
        return proc

    def worker(self, name: str, *extra: str, wait: bool = True, **env: str) -> Proc:
        """Start ``cordtrio worker`` recording to ``records/<name>.log`` (``env``: more
        environment variables, e.g. ``CORDTRIO_E2E_SLEEP``)."""
        proc = self.start(name, "worker", "--connect", self.bus, "--handlers", HANDLERS,
                          "--worker-id", name, *extra, CORDTRIO_E2E_WORKER=name, **env)
        if wait:
            proc.wait_for("ready:", timeout=30)
        return proc

    def cluster(self, *workers: str, serve_args: tuple[str, ...] = ()) -> None:
        """``serve`` and workers started together (start-up is the slow part), all ready."""
        procs = [self.serve("serve", *serve_args, wait=False),
                 *(self.worker(name, wait=False) for name in workers)]
        for proc in procs:
            proc.wait_for("ready:", timeout=30)

    def cli(self, *args: str, timeout: float = 30.0,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cordtrio ARGS`` to completion."""
        return subprocess.run([sys.executable, "-m", "cordtrio", *args], input=stdin,
                              capture_output=True, text=True, env=self.env(),
                              cwd=self.directory, timeout=timeout)

    def cli_many(self, *commands: tuple[str, ...],
                 timeout: float = 30.0) -> list[subprocess.CompletedProcess[str]]:
        """Run independent ``cordtrio`` commands at the same time (start-up dominates)."""
        procs = [subprocess.Popen([sys.executable, "-m", "cordtrio", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=self.env(), cwd=self.directory) for args in commands]
        done = []
        for args, proc in zip(commands, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise
            done.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
        return done

    def cli_json(self, *args: str, timeout: float = 30.0) -> object:
        done = self.cli(*args, "--json", timeout=timeout)
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    def executions(self) -> dict[str, Counter[str]]:
        """Per worker: job id → how often a handler started it."""
        out: dict[str, Counter[str]] = {}
        for log in self.records.glob("*.log"):
            counts: Counter[str] = Counter()
            for line in log.read_text(encoding="utf-8").splitlines():
                event, _, job_id = line.partition(" ")
                if event == "start":
                    counts[job_id] += 1
            out[log.stem] = counts
        return out

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()


def workflow_file(name: str) -> str:
    return str(WORKFLOWS / name)




def attempts_by_target(executions: dict[str, Counter[str]]) -> Counter[str]:
    """Handler starts per ``run:step`` (or ``run:step[i]``) over all workers and attempts."""
    out: Counter[str] = Counter()
    for counts in executions.values():
        for job_id, n in counts.items():
            out[job_id.rpartition("@")[0]] += n
    return out


def distinct_attempts_by_target(executions: dict[str, Counter[str]]) -> Counter[str]:
    """Distinct attempts (job ids) started per ``run:step`` over all workers: a job run
    twice by at-least-once delivery counts once."""
    seen: set[str] = set()
    for counts in executions.values():
        seen.update(counts)
    return Counter(job_id.rpartition("@")[0] for job_id in seen)


def runs_per_job(executions: dict[str, Counter[str]]) -> Counter[str]:
    """Handler starts per job id (one attempt) over all workers."""
    out: Counter[str] = Counter()
    for counts in executions.values():
        out.update(counts)
    return out


def poll(check: Callable[[], T | None], what: str, timeout: float = 20.0,
         interval: float = 0.2) -> T:
    """Call ``check`` until it returns something other than None (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_run(url: str, run_id: str) -> dict[str, Any]:
    """The run as stored, read in-process (polling through a CLI process per look would
    spend a second of interpreter start-up each time)."""

    async def get() -> dict[str, Any]:
        async with connect(url) as redis:
            return (await redis.store.get_run(run_id)).to_dict()

    return trio.run(get)


def submit_runs(url: str, workflow_id: str, count: int,
                input: dict[str, Any] | None = None) -> list[str]:
    """Submit ``count`` runs in-process through ``cordtrio.client.Client``."""

    async def go() -> list[str]:
        async with connect(url) as redis:
            client = Client(redis.store, schemas=redis.schemas)
            return [await client.submit(workflow_id, input) for _ in range(count)]

    return trio.run(go)
