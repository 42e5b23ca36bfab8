"""Handlers for ``flaky_call.yaml``: the first attempt hangs past the step's timeout."""

from __future__ import annotations

from typing import Any

import trio

from cordtrio import Job


async def quote(job: Job) -> dict[str, Any]:
    symbol = job.input.get("symbol") or "TRIO"
    if job.attempt == 1:
        await trio.sleep(30)  # hangs: the 1 s step timeout cancels it
    await trio.sleep(0.1)
    return {"symbol": symbol, "price": 42.5, "attempt": job.attempt}


HANDLERS = {"job.api.quote": quote}
