"""Crash test: ``cordtrio serve`` is killed (SIGKILL) with 200 runs in flight; a new one
takes them over (after the dead engine's leases expire) and every run completes, with no
step attempted more often than its retries allow (an attempt whose job died with the
engine runs again: at least once)."""

from __future__ import annotations

import signal

import pytest
import trio
from e2e_harness import (
    Deployment,
    distinct_attempts_by_target,
    poll,
    runs_per_job,
    workflow_file,
)

from cordtrio.backends.redis import connect
from cordtrio.client import Client
from cordtrio.model import RunStatus

RUNS = 200
ITEMS = [0, 1, 2]
MAX_ATTEMPTS = 3  # e2e_many.yaml: max_retries 2 on both steps
# Short, so the new engine takes over quickly. With 2 s, a loaded 2-core machine makes the
# engine miss its own renewals and lose leases; that works too (commands taken and not yet
# persisted stay in the run's processing list and are applied again), but churns more.
LEASE_TTL = "5"


async def _submit_all(url: str) -> list[str]:
    async with connect(url) as redis:
        client = Client(redis.store, schemas=redis.schemas)
        return [await client.submit("e2e_many", {"items": ITEMS, "sleep": 0.01})
                for _ in range(RUNS)]


async def _statuses(url: str) -> dict[str, int]:
    async with connect(url) as redis:
        return {s.value: len(await redis.store.list_run_ids_by_status(s.value, 10 * RUNS))
                for s in RunStatus}


async def _stuck(url: str) -> str:
    """Lease holder and queued commands of a few unfinished runs (for failure messages)."""
    async with connect(url) as redis:
        call = redis.redis.call
        ids = [*await redis.store.list_run_ids_by_status("pending", 3),
               *await redis.store.list_run_ids_by_status("running", 3)]
        out = [{"run": run_id,
                "status": (await redis.store.get_run(run_id)).status.value,
                "lease": await call("lease", "", "get", f"cordtrio:lease:{run_id}"),
                "inbox": await call("inbox", "", "llen", f"cordtrio:inbox:{run_id}"),
                "processing": await call("processing", "", "llen",
                                         f"cordtrio:processing:{run_id}")}
               for run_id in ids]
        queued = await call("queue", "", "llen", "cordtrio:commands")
        return f"unfinished: {out}, unassigned commands: {queued}"


def test_killed_serve_is_replaced_and_every_run_completes(deployment: Deployment) -> None:
    d = deployment
    assert d.cli("workflows", "put", workflow_file("e2e_many.yaml")).returncode == 0
    d.cluster("w1", "w2", serve_args=("--lease-ttl", LEASE_TTL))
    first = d.procs[0]
    run_ids = trio.run(_submit_all, d.redis_url)

    # kill the engine in the middle: some runs done, many not
    poll(lambda: True if trio.run(_statuses, d.redis_url)["succeeded"] >= RUNS // 5
         else None, "a fifth of the runs to succeed", timeout=60)
    first.stop(signal.SIGKILL)
    before = trio.run(_statuses, d.redis_url)
    assert before["succeeded"] < RUNS, "the crash must come mid-way"

    second = d.serve("serve-2", "--lease-ttl", LEASE_TTL)
    seen: list[dict[str, int]] = [before]

    def all_terminal() -> dict[str, int] | None:
        counts = trio.run(_statuses, d.redis_url)
        seen.append(counts)
        finished = sum(counts[s.value] for s in RunStatus if s.is_terminal)
        return counts if finished == RUNS else None

    try:
        counts = poll(all_terminal, "every run to finish after the restart", timeout=60,
                      interval=0.5)
    except pytest.fail.Exception:
        counts = seen[-1]

    # no step (or for-each item) had more attempts than its retries allow, whatever
    # happened; an attempt whose job died with the engine may have run twice (at least
    # once: recovery publishes it again), never more
    attempts = distinct_attempts_by_target(d.executions())
    targets = [f"items[{i}]" for i in range(len(ITEMS))] + ["flaky"]
    for run_id in run_ids:
        for target in targets:
            assert attempts[f"{run_id}:{target}"] <= MAX_ATTEMPTS, (run_id, target)
    assert max(runs_per_job(d.executions()).values()) <= 2

    # ... and no run is stuck
    if counts["succeeded"] != RUNS:
        stuck = trio.run(_stuck, d.redis_url)
        pytest.fail(f"runs by status: at the kill {before}, at the end {counts}; {stuck}; "
                    f"serve-2 said:\n{second.output()[-3000:]}")
    for run_id in run_ids:
        for target in targets:
            assert attempts[f"{run_id}:{target}"] >= 1, (run_id, target)
