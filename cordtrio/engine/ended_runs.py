"""Final runs kept for the ``wait_run`` that comes after the run ended.

A run that ends with nobody waiting is usually waited for soon after (``Engine.run`` and
the benchmarks' harness submit, then wait): reading it back from the store would cost a
full run read. The engine keeps the final run its task held instead — at most
``ENDED_KEPT``, oldest dropped first — and gives it to the next ``wait_run``, once (the
caller may change what it gets), after asking the store whether the run still exists
(``ports.RunPresence``: a deleted run is read, and not found, as before). A new task for
the run here drops it (the task may change the run).

This holds with several engines on one store too: a terminal run is never changed again
(SPEC §9: cancelling it changes nothing, approving needs a waiting step, a rerun is a new
run), and the task's final run is what the store holds — its last write was fenced by the
run's lease, so a task that lost the lease keeps nothing. It is what a waiter that was
already there gets anyway (``Finish``).
"""

from __future__ import annotations

from ..model import WorkflowRun
from ..ports import RunPresence

ENDED_KEPT = 1024
"""Final runs an engine keeps for ``wait_run`` calls that come after the run ended."""


class EndedRuns(dict[str, WorkflowRun]):
    """The final runs of runs that ended here with nobody waiting, by run id, oldest first
    (a dict: ``in``, asked on every ``wait_run``, and ``pop``, a new task's forgetting its
    run's, are its own)."""

    __slots__ = ("_presence",)

    def __init__(self, store: object) -> None:
        super().__init__()
        self._presence = store if isinstance(store, RunPresence) else None

    def keep(self, run_id: str, run: WorkflowRun) -> None:
        """Keep ``run`` for the next ``wait_run`` (nothing, over a store that cannot tell
        a deleted run)."""
        if self._presence is None:
            return
        if len(self) >= ENDED_KEPT:
            del self[next(iter(self))]
        self[run_id] = run

    async def take(self, run_id: str) -> WorkflowRun | None:
        """The kept final run (to the first caller only), if the run is still stored;
        None: nothing kept, or deleted since (the caller reads the store, which raises the
        store's own ``NotFoundError``)."""
        final = self.pop(run_id, None)
        if final is None or self._presence is None:
            return None
        if await self._presence.missing_runs([run_id]):
            return None
        return final


__all__ = ["ENDED_KEPT", "EndedRuns"]
