"""The Celery peer: canvas equivalents of W1, W2, W3 and W5 on the harness's redis-server
(broker and result backend), with one Celery worker subprocess.

* W1: ``chain`` of 5 no-op tasks per run, all runs applied before any is awaited;
* W2: ``chord`` of N no-op tasks with a no-op callback (no ``max_parallel`` in Celery: the
  worker's prefetch bounds what is in flight);
* W3: ``chord`` of 50 chains of 4 tasks with a callback, per run;
* W5: a chain of 5 tasks that each fail once and ``retry(countdown=backoff)``.

W4 has no equivalent (Celery has no approval steps). The worker runs ``--pool=solo`` by
default (one process, like cordtrio's single worker process; see docs/benchmarks.md for the
prefork measurement); ``CORDTRIO_BENCH_CELERY_POOL=prefork`` runs prefork with 2 processes.
Results are awaited through ``celery_wait.collect``: Celery's own ``get()`` in 0.5 s
slices, with the stored result read when its notification does not come, and a clear
failure instead of a hang when the worker exits or stops making progress. The worker's
stderr goes to a file (a pipe nobody reads would block a worker that logs more than the
pipe holds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..measure import RedisStats, Sample, command_delta
from ..workloads import BRANCH_STEPS, BRANCHES, CHAIN_STEPS, RETRY_STEPS
from .celery_wait import PeerStalled, collect

POOL_ENV = "CORDTRIO_BENCH_CELERY_POOL"
START_TIMEOUT = 60.0
RESULT_TIMEOUT = 600.0
STALL_TIMEOUT = 60.0
"""Seconds without a result or a new key in Redis before the peer is declared stuck."""


class CeleryPeer:
    workloads: tuple[str, ...] = ("w1", "w2", "w3", "w5")
    needs_redis = True
    key = "celery"

    def __init__(self) -> None:
        self.pool = os.environ.get(POOL_ENV, "solo")
        self.name = f"celery ({self.pool})"

    def unavailable(self) -> str | None:
        try:
            import celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError as exc:
            return f"cannot import {exc.name}: pip install 'cordtrio[bench]' ({exc})"
        if self.pool not in ("solo", "prefork"):
            return f"{POOL_ENV}={self.pool!r}: choose solo or prefork"
        return None

    @contextmanager
    def session(self, redis: RedisStats | None,
                log: Callable[[str], None]) -> Iterator[CelerySession]:
        if redis is None:
            raise RuntimeError("the Celery peer needs a redis-server")
        os.environ["CORDTRIO_BENCH_REDIS_URL"] = redis.url  # read when celery_app imports
        redis.flush()
        from . import celery_app

        if redis.url != celery_app.URL:  # imported earlier with another server
            celery_app.app.conf.broker_url = celery_app.app.conf.result_backend = redis.url
        pool = ["--pool=solo"] if self.pool == "solo" else ["--pool=prefork", "--concurrency=2"]
        with tempfile.TemporaryFile() as stderr:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
                 *pool, "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-Q", "cordtrio-bench"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                env={**os.environ, "CORDTRIO_BENCH_REDIS_URL": redis.url})
            session = CelerySession(self.name, celery_app, redis, worker, stderr, log)
            try:
                try:
                    session.wait([celery_app.noop.delay()], timeout=START_TIMEOUT)
                except PeerStalled as exc:
                    raise RuntimeError(f"the celery worker did not answer: {exc}") from None
                yield session
            finally:
                if worker.poll() is None:
                    worker.terminate()
                    try:
                        worker.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                        worker.wait()


class CelerySession:
    def __init__(self, name: str, module: Any, redis: RedisStats,
                 worker: subprocess.Popen[bytes], stderr: Any,
                 log: Callable[[str], None]) -> None:
        self.name = name
        self.m = module
        self.redis = redis
        self.worker = worker
        self.stderr = stderr
        self.log = log

    def _worker_exit(self) -> str | None:
        code = self.worker.poll()
        if code is None:
            return None
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-400:].strip()
        return f"exit code {code}; stderr: {tail or '(empty)'}"

    def _stored_status(self, task_id: str) -> str:
        return str(self.m.app.backend.get_task_meta(task_id, cache=False)["status"])

    def wait(self, results: list[Any], timeout: float = RESULT_TIMEOUT) -> int:
        """Wait for ``results`` (``celery_wait.collect``); how many were read stored."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        got = collect(results, stored_status=self._stored_status,
                      worker_exit=self._worker_exit, progress=self.redis.key_count,
                      timeout_error=CeleryTimeout, timeout=timeout,
                      stall=min(STALL_TIMEOUT, timeout))
        if got.read_stored:
            self.log(f"{self.name}: {got.read_stored} of {got.results} results read from "
                     "Redis after a 0.5 s wait without their notification")
        return got.read_stored

    def run(self, workload: str, size: int, repeat: int) -> list[Sample]:
        return [self.run_once(workload, size) for _ in range(repeat)]

    def run_once(self, workload: str, size: int) -> Sample:
        from celery import chain, chord

        noop, flaky = self.m.noop, self.m.flaky
        before = self.redis.commandstats()
        start = time.perf_counter()
        if workload == "w1":
            results = [chain(*(noop.s() for _ in range(CHAIN_STEPS))).apply_async()
                       for _ in range(size)]
            steps, runs = size * CHAIN_STEPS, size
        elif workload == "w2":
            results = [chord(noop.s(i) for i in range(size))(noop.s())]
            steps, runs = size + 1, 1
        elif workload == "w3":
            results = [chord(chain(*(noop.s() for _ in range(BRANCH_STEPS)))
                             for _ in range(BRANCHES))(noop.s()) for _ in range(size)]
            steps, runs = size * (BRANCHES * BRANCH_STEPS + 1), size
        elif workload == "w5":
            results = [chain(*(flaky.s() for _ in range(RETRY_STEPS))).apply_async()
                       for _ in range(size)]
            steps, runs = size * RETRY_STEPS, size
        else:
            raise ValueError(f"the Celery peer has no equivalent of {workload}")
        read_stored = self.wait(results)
        seconds = time.perf_counter() - start
        delta = command_delta(before, self.redis.commandstats())
        extra = {"attempts": float(2 * steps)} if workload == "w5" else {}
        if read_stored:
            extra["results_read_stored"] = float(read_stored)
        return Sample(workload, self.name, size, steps, runs, seconds, redis_commands=delta,
                      extra=extra)
