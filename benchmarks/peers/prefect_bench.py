"""The Prefect peer: W1 in Prefect 3 local mode (no server of ours: Prefect's own ephemeral
API on SQLite), in a subprocess so its event loop, settings and database stay out of the
harness:

    python -m benchmarks.peers.prefect_bench RUNS REPEAT   # prints JSON: seconds per rep

W1 is RUNS async flows of 5 chained no-op tasks, all started at once (``asyncio.gather``),
REPEAT times in the same process. One warm-up flow runs first (Prefect starts its API on
first use) and is not timed. Prefect's per-run overhead is large (API calls to its server
per flow and task run), so the run count is capped at ``MAX_RUNS``; the ratio table then
compares rates measured at different sizes (it says so).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..measure import RedisStats, Sample
from ..workloads import CHAIN_STEPS

MAX_RUNS = 10
RUN_TIMEOUT = 1200.0
STARTUP_TIMEOUT = 180  # Prefect's ephemeral server takes tens of seconds on a busy machine


class PrefectPeer:
    name = "prefect (local)"
    workloads: tuple[str, ...] = ("w1",)
    needs_redis = False
    key = "prefect"

    def unavailable(self) -> str | None:
        try:
            import prefect
        except ImportError as exc:
            return f"cannot import {exc.name}: pip install 'prefect>=3' ({exc})"
        major = str(getattr(prefect, "__version__", "0")).split(".")[0]
        if major != "3":
            return f"prefect {prefect.__version__} installed, the benchmark needs Prefect 3"
        return None

    @contextmanager
    def session(self, redis: RedisStats | None,
                log: Callable[[str], None]) -> Iterator[PrefectSession]:
        with tempfile.TemporaryDirectory(prefix="cordtrio-bench-prefect-") as home:
            yield PrefectSession(self.name, home)


class PrefectSession:
    def __init__(self, name: str, home: str) -> None:
        self.name = name
        self.home = home

    def run(self, workload: str, size: int, repeat: int) -> list[Sample]:
        if workload != "w1":
            raise ValueError(f"the Prefect peer has no equivalent of {workload}")
        runs = min(size, MAX_RUNS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=self.home, PREFECT_LOGGING_LEVEL="ERROR",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(STARTUP_TIMEOUT))
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.peers.prefect_bench", str(runs), str(repeat)],
            capture_output=True, env=env, timeout=RUN_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"prefect benchmark exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-600:]}")
        out = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return [Sample("w1", self.name, runs, runs * CHAIN_STEPS, runs, seconds,
                       peak_rss_mib=out.get("peak_rss_mib"))
                for seconds in out["seconds"]]


def _measure(runs: int, repeat: int) -> dict[str, Any]:  # pragma: no cover - subprocess
    import asyncio
    import resource

    from prefect import flow, task

    @task
    async def noop(previous: Any = None) -> dict[str, Any]:
        return {"ok": True}

    @flow
    async def chain() -> Any:
        result = None
        for _ in range(CHAIN_STEPS):
            result = await noop(result)
        return result

    async def main() -> list[float]:
        await chain()  # warm-up: Prefect's API starts on first use
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            await asyncio.gather(*(chain() for _ in range(runs)))
            seconds.append(time.perf_counter() - start)
        return seconds

    seconds = asyncio.run(main())
    return {"seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]), int(sys.argv[2]))))
