"""Runs whose stored data cannot be read (``CorruptDataError``: corrupt JSON, a key of the
wrong type): the engine marks them ``failed`` through the store (``ports.RunRepair``), with an
error naming the key and what is wrong, so they never stay ``running`` in the indexes and
metrics. One ERROR line per run, no traceback."""

from __future__ import annotations

import logging

from ..errors import CordtrioError, CorruptDataError, NotFoundError
from ..model import WorkflowRun
from ..ports import RunRepair, Store
from ..retry import retrying

log = logging.getLogger("cordtrio.engine")


async def fail_unreadable(store: Store, run_id: str, error: CorruptDataError) -> bool:
    """Mark ``run_id`` failed because of ``error``; True when the store did it. Logged."""
    if not isinstance(store, RunRepair):
        log.error("run %s: stored data cannot be read: %s", run_id, error)
        return False
    try:
        done = await retrying(
            lambda: store.fail_unreadable_run(
                run_id, f"run {run_id}: stored data cannot be read: {error}"),
            f"mark unreadable run {run_id} failed")
    except NotFoundError:
        return False
    except CordtrioError as exc:
        log.error("run %s: stored data cannot be read (%s), and marking it failed failed "
                  "too: %s", run_id, error, exc)
        return False
    log.error("%s", done)
    return True


async def load_run(store: Store, run_id: str) -> WorkflowRun:
    """``store.get_run`` (transient failures retried); a run that cannot be read is marked
    failed and read again — the task then holds a terminal run. Raises the original
    ``CorruptDataError`` if it cannot be repaired."""
    try:
        return await retrying(lambda: store.get_run(run_id), f"load run {run_id}")
    except CorruptDataError as exc:
        if not await fail_unreadable(store, run_id, exc):
            raise
    return await retrying(lambda: store.get_run(run_id), f"load run {run_id}")


__all__ = ["fail_unreadable", "load_run"]
