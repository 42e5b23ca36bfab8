"""Handlers for ``approval_deploy.yaml``."""

from __future__ import annotations

from typing import Any

import trio

from cordtrio import Job


async def build(job: Job) -> dict[str, Any]:
    service = job.input.get("service") or "webshop"
    version = job.input.get("version") or "1.0.0"
    await trio.sleep(0.3)
    return {"artifact": f"{service}-{version}.tar.gz", "size_bytes": 1_048_576}


async def release(job: Job) -> dict[str, Any]:
    await trio.sleep(0.2)
    if job.input.get("fail"):
        raise RuntimeError(f"health check failed after deploying {job.input.get('artifact')}")
    return {"deployed": job.input.get("artifact"), "replicas": 3}


async def rollback(job: Job) -> dict[str, Any]:
    await trio.sleep(0.1)
    return {"rolled_back": job.input.get("artifact"), "reason": job.input.get("reason")}


HANDLERS = {
    "job.deploy.build": build,
    "job.deploy.release": release,
    "job.deploy.rollback": rollback,
}
