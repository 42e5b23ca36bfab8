"""Final runs kept for the ``wait_run`` that comes after the run ended.

A run that ends with nobody waiting is usually waited for soon after (``Engine.run`` and
the benchmarks' harness submit, then wait): reading it back from the store would cost a
full run read. The engine keeps the final run its task held instead — at most
``ENDED_KEPT``, oldest dropped first — and gives it to the next ``wait_run``, once (the
caller may change what it gets). A new task for the run here drops it (the task may
change the run).

A run deleted since is not found, as a read would find. The run task takes a ``mark`` as
it sends the run's last write: the time, and the store's count of the ``delete_run``
calls made through that store object that have ended (``runs_deleted``). A take asks the
store whether the run still exists (``ports.RunPresence``) when that count has moved
since the mark or a ``delete_run`` is under way (``runs_deleting``: one that started
before the mark may land after the last write) — any run's deletion through the store —,
when the mark is older than ``ENDED_TRUSTED`` seconds (or the store's retention, if
shorter: the run may have expired), or when there is no mark (the task wrote no final
state). Otherwise, within two seconds of its last write, a run deleted through another
store object (another connection, another process) may still be answered from here: as
with an update written behind the engine's back, the one ``wait_run`` that takes the
kept run does not see it. Asking every time cost a round trip per ``wait_run`` of a
finished run (a waiter taking its runs one after another, as the harness and
``Engine.run``'s callers do, paid one lone round trip each: ~11 % of W1's time on
``redis-nng``, docs/decisions.md). A store that does not count its deletions is asked
every time.

This holds with several engines on one store too: a terminal run is never changed again
(SPEC §9: cancelling it changes nothing, approving needs a waiting step, a rerun is a new
run), and the task's final run is what the store holds — its last write was fenced by the
run's lease, so a task that lost the lease keeps nothing. It is what a waiter that was
already there gets anyway (``Finish``).
"""

from __future__ import annotations

from typing import Any

import trio

from ..model import WorkflowRun
from ..ports import RunPresence

ENDED_KEPT = 1024
"""Final runs an engine keeps for ``wait_run`` calls that come after the run ended."""

ENDED_TRUSTED = 2.0
"""Seconds after its last write was sent (Trio's clock) a kept run is answered without
asking the store whether it still exists, unless a deletion through the store ended since
or is under way."""

_UNMARKED = (0.0, -1)  # a final run its task did not write: the store is asked


class EndedRuns(dict[str, tuple[WorkflowRun, float, int]]):
    """The final runs of runs that ended here with nobody waiting, by run id, oldest first,
    each with its task's ``mark`` (the time and the store's count of deletions as the
    run's last write went; a dict: ``in``, asked on every ``wait_run``, and ``pop``, a new
    task's forgetting its run's, are its own)."""

    __slots__ = ("_presence", "_store", "_trusted")

    def __init__(self, store: object) -> None:
        super().__init__()
        self._presence = store if isinstance(store, RunPresence) else None
        self._store: Any = store
        retention = getattr(store, "retention_seconds", None)
        self._trusted = ENDED_TRUSTED if not retention else min(ENDED_TRUSTED,
                                                                float(retention))

    def mark(self) -> tuple[float, int]:
        """Now and the store's count of deletions (-1: it keeps none), taken by a run task
        as it sends its run's last write: what ``keep`` trusts a final run from."""
        return trio.current_time(), getattr(self._store, "runs_deleted", -1)

    def keep(self, run_id: str, run: WorkflowRun, mark: tuple[float, int] | None) -> None:
        """Keep ``run`` for the next ``wait_run``, with the ``mark`` taken as its last
        write went (None: it wrote none, the store is asked) — nothing, over a store that
        cannot tell a deleted run."""
        if self._presence is None:
            return
        if len(self) >= ENDED_KEPT:
            del self[next(iter(self))]
        at, deletions = mark or _UNMARKED
        self[run_id] = (run, at, deletions)

    async def take(self, run_id: str) -> WorkflowRun | None:
        """The kept final run (to the first caller only), if the run is still stored;
        None: nothing kept, or deleted since (the caller reads the store, which raises the
        store's own ``NotFoundError``)."""
        kept = self.pop(run_id, None)
        if kept is None or self._presence is None:
            return None
        final, at, deletions = kept
        store = self._store
        trusted = deletions >= 0 and deletions == getattr(store, "runs_deleted", -1) \
            and not getattr(store, "runs_deleting", 1) \
            and trio.current_time() - at < self._trusted
        if not trusted and await self._presence.missing_runs([run_id]):
            return None
        return final


__all__ = ["ENDED_KEPT", "ENDED_TRUSTED", "EndedRuns"]
