"""The multi-engine lease keeper's upkeep in the background (``leases.LeaseKeeper`` is a
``LeaseUpkeep``): the renewal of every lease this engine holds, one store call every
``ttl/3`` (a lease reported lost, or not renewed for ``TRUSTED`` of the ttl, stops its run
task at once); the wake-ups of runs whose inbox received something; and, every ``ttl/2``,
the takeover of running or waiting runs, and runs with queued commands, whose lease is
free (see ``leases``' docstring for the rules).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio

from ..core.events import Start
from ..errors import CordtrioError
from ..model import RunStatus
from ..ports import RunLeases, RunPresence, Store
from ..ratelog import RateLimitedLog
from ..retry import retrying
from .envelopes import Envelope
from .host import OwnedRun, RunRouter

log = logging.getLogger("cordtrio.engine")

SCAN_PAGE = 1_000_000
UNLEASED_CHUNK = 1_000
WAKE_WAIT_MAX = 5.0
TRUSTED = 0.9
"""The share of the ttl the leases are trusted for after the last renewal that went
through: past it, they may have expired (their tasks are stopped)."""


class LeaseUpkeep:
    """The background loops of a ``LeaseKeeper`` (started by its ``start``)."""

    # what the keeper has (``LeaseKeeper.__init__``)
    store: RunLeases
    runs_store: Store
    router: RunRouter
    owner: str
    ttl: float
    held: dict[str, OwnedRun]
    crashed: bool
    _renewed_at: float
    _log: RateLimitedLog

    # ------------------------------------------------------------------ background

    async def keep(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Renew this engine's leases every ``ttl/3``; cancel the tasks of lost ones."""
        task_status.started()
        last_ok = trio.current_time()
        while True:
            await trio.sleep(self.ttl / 3)
            if self.crashed:
                return
            ids = list(self.held)
            try:
                lost = await self.store.renew_leases(self.owner, ids, self.ttl) if ids else set()
            except Exception as exc:
                self._log.warning("renew", "engine %s: renewing %d leases failed: %r",
                                  self.owner, len(ids), exc)
                if trio.current_time() - last_ok >= self.ttl * TRUSTED:
                    lost = set(ids)  # they may have expired: stop acting on every run
                    last_ok = trio.current_time()
                else:
                    continue
            else:
                last_ok = self._renewed_at = trio.current_time()
            gone = [i for i in ids if i in lost and i in self.held]  # stable order
            if gone:
                await self._report_lost(gone)
            for run_id in gone:
                task = self.held.pop(run_id, None)
                if task is not None:
                    task.lease_lost()

    async def _report_lost(self, run_ids: list[str]) -> None:
        """One line per cause for leases lost in one renewal: runs whose data is gone from
        the store (a Redis restarted without persistence), and the others (their lease
        expired or another engine holds it)."""
        vanished: list[str] = []
        store = self.runs_store
        if isinstance(store, RunPresence):
            try:
                vanished = await store.missing_runs(run_ids)
            except Exception as exc:  # only the wording of the report depends on it
                log.debug("engine %s: could not check which runs exist: %r", self.owner, exc)
        if vanished:
            log.warning("engine %s: Redis lost %d run(s)' data (restart without "
                        "persistence?): their run keys and leases are gone; stopping their "
                        "tasks (%s)", self.owner, len(vanished), _sample(vanished))
        rest = [i for i in run_ids if i not in set(vanished)]
        if rest:
            log.warning("engine %s: lost the lease of %d run(s) (expired, or another engine "
                        "holds it now); stopping their tasks (%s)", self.owner, len(rest),
                        _sample(rest))

    async def wake_loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver a "drain your inbox" envelope for every run woken for this engine (or
        queued for any engine)."""
        task_status.started()
        timeout = min(self.ttl / 3, WAKE_WAIT_MAX)
        while True:
            if self.crashed:
                await trio.sleep_forever()
            try:
                ids = await self.store.wait_wakeups(self.owner, timeout)
            except CordtrioError as exc:
                log.warning("engine %s: waiting for wake-ups failed: %s", self.owner, exc)
                await trio.sleep(min(1.0, timeout))
                continue
            for run_id in ids:
                self.router.deliver(run_id, drain_envelope())

    async def takeover_loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Every ``ttl/2``, activate runs nobody holds (see ``scan``)."""
        task_status.started()
        while True:
            await trio.sleep(self.ttl / 2)
            if self.crashed:
                return
            try:
                await self.scan()
            except CordtrioError as exc:
                log.warning("engine %s: takeover scan failed: %s", self.owner, exc)

    async def scan(self) -> int:
        """Activate every running/waiting run, and every run with queued or unacknowledged
        commands (a pending run whose ``Start`` was taken and never applied), whose lease
        is free and that has no task here. Returns how many were activated."""
        ids: list[str] = []
        for status in (RunStatus.RUNNING, RunStatus.WAITING):
            ids += await retrying(
                functools.partial(self.runs_store.list_run_ids_by_status, status.value,
                                  SCAN_PAGE), f"list {status.value} runs")
        ids += await retrying(functools.partial(self.store.runs_with_commands, SCAN_PAGE),
                              "list runs with queued commands")
        candidates = [i for i in dict.fromkeys(ids) if not self.router.is_active(i)]
        taken: list[str] = []
        for start in range(0, len(candidates), UNLEASED_CHUNK):
            chunk = candidates[start:start + UNLEASED_CHUNK]
            free = await retrying(functools.partial(self.store.unleased, chunk),
                                  "check free leases")
            for run_id in free:
                if not self.router.is_active(run_id):
                    self.router.deliver(run_id, drain_envelope())
                    taken.append(run_id)
        if taken:
            log.info("engine %s: took over %d run(s) with no live owner: %s",
                     self.owner, len(taken), abbreviate_ids(taken))
        return len(taken)

def abbreviate_ids(ids: list[str], shown: int = 5, width: int = 8) -> str:
    """``3f2a9c1e…, 77b0d2aa… (+12 more)``: the first ``shown`` ids cut to ``width``."""
    short = [i if len(i) <= width else i[:width] + "…" for i in ids[:shown]]
    more = f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
    return ", ".join(short) + more


def _sample(run_ids: list[str], shown: int = 3) -> str:
    """``"run a, b, c and 17 more"``: a few ids for the log line, not all of them."""
    more = f" and {len(run_ids) - shown} more" if len(run_ids) > shown else ""
    return "run " + ", ".join(run_ids[:shown]) + more


def drain_envelope() -> Envelope:
    """An envelope telling the run task to apply its run's inbox (it carries no event of its
    own; ``Start`` is a placeholder never decided)."""
    return Envelope(Start(), drain=True)



__all__ = ["SCAN_PAGE", "TRUSTED", "UNLEASED_CHUNK", "WAKE_WAIT_MAX", "LeaseUpkeep",
           "abbreviate_ids", "drain_envelope"]
