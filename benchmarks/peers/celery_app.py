"""The Celery app of the Celery peer: no-op tasks on the harness's redis-server (broker and
result backend), which the worker subprocess imports with ``-A benchmarks.peers.celery_app``.
The server's URL comes from ``CORDTRIO_BENCH_REDIS_URL``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from ..workloads import RETRY_BACKOFF_SEC

URL_ENV = "CORDTRIO_BENCH_REDIS_URL"
URL = os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0")

app = Celery("cordtrio_bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="cordtrio-bench",
)


@app.task(name="bench.noop")
def noop(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The no-op task: a small dict, no work (chains pass the previous result in args)."""
    return {"ok": True}


@app.task(name="bench.flaky", bind=True, max_retries=1)
def flaky(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Fails its first attempt and is retried after W5's backoff, then succeeds."""
    if self.request.retries == 0:
        raise self.retry(countdown=RETRY_BACKOFF_SEC)
    return {"ok": True}
