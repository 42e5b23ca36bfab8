"""Handlers for the process tests: every execution is appended to a per-worker file.

``$CORDTRIO_E2E_DIR/<$CORDTRIO_E2E_WORKER>.log`` gets ``start <job_id>`` when a handler
begins and ``done <job_id>`` when it returns (``work`` also ``stop <job_id>`` when it is
cancelled), so a test can tell which worker ran what, how often, and whether it finished.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from cordtrio import Job


def _record(event: str, job: Job) -> None:
    directory = os.environ.get("CORDTRIO_E2E_DIR")
    if not directory:
        return
    worker = os.environ.get("CORDTRIO_E2E_WORKER", "worker")
    with open(Path(directory) / f"{worker}.log", "a", encoding="utf-8") as f:
        f.write(f"{event} {job.job_id}\n")
        f.flush()


async def work(job: Job) -> dict[str, Any]:
    """Sleeps ``input.sleep`` seconds (``$CORDTRIO_E2E_SLEEP`` seconds if set: a slow
    worker), returns the item (or ``input.n``). Records ``stop`` if cancelled meanwhile."""
    _record("start", job)
    try:
        await trio.sleep(float(os.environ.get("CORDTRIO_E2E_SLEEP")
                               or job.input.get("sleep") or 0))
    except trio.Cancelled:
        _record("stop", job)
        raise
    _record("done", job)
    return {"value": job.item if job.item is not None else job.input.get("n"),
            "attempt": job.attempt}


async def flaky(job: Job) -> dict[str, Any]:
    """Fails its first attempt, succeeds after."""
    _record("start", job)
    if job.attempt == 1:
        _record("fail", job)
        raise RuntimeError(f"first attempt of {job.job_id} fails on purpose")
    _record("done", job)
    return {"attempt": job.attempt}


async def hang_once(job: Job) -> dict[str, Any]:
    """The first attempt hangs for a minute (its worker gets killed meanwhile)."""
    _record("start", job)
    if job.attempt == 1:
        await trio.sleep(60)
    _record("done", job)
    return {"attempt": job.attempt}


HANDLERS = {
    "job.e2e.work": work,
    "job.e2e.flaky": flaky,
    "job.e2e.hang": hang_once,
}

UPGRADED = {**HANDLERS, "job.e2e.extra": work}
"""A newer worker's handlers: one topic more (``--handlers e2e_handlers.py:UPGRADED``)."""
