"""``wait_run``: callers waiting for a run to end, and the final runs kept for those who
come after it ended.

A run this engine drives is not read while it is unfinished (its task's state says so):
its waiters share one ``Finish``, woken by the task when the run ends, and the first of
them gets the task's final run once the task has let go of it — no store read at all. A
run that ended with nobody waiting leaves its final run in ``ended_runs.EndedRuns`` for
the ``wait_run`` that usually follows. A run nobody drives here (another engine does) is
re-read every ``poll_interval`` seconds.
"""

from __future__ import annotations

import trio

from ..model import WorkflowRun
from ..ports import Store
from .ended_runs import EndedRuns
from .envelopes import Finish
from .run_task import RunTask


class RunWaits:
    """The ``wait_run`` callers of one engine; ``runs`` is the engine's table of run tasks
    (read here, changed only by the engine)."""

    __slots__ = ("ended", "finishes", "runs", "store")

    def __init__(self, store: Store, runs: dict[str, RunTask]) -> None:
        self.store = store
        self.runs = runs
        self.finishes: dict[str, Finish] = {}
        """The runs someone waits for, each with the ``Finish`` its waiters share."""
        self.ended = EndedRuns(store)
        """Final runs of runs that ended here with nobody waiting."""

    async def wait(self, run_id: str, poll_interval: float) -> WorkflowRun:
        """``Engine.wait_run``: the run, once it is terminal."""
        if run_id not in self.runs and run_id not in self.finishes:
            # Nobody drives or awaits the run here (usually: it finished before the call):
            # the final run its task kept, or one read, answers, without a ``Finish`` to
            # register and drop. Not finished: the loop below registers, then reads again
            # (nothing ends unseen in between).
            if run_id in self.ended:
                final = await self.ended.take(run_id)
                if final is not None:
                    return final
            run = await self.store.get_run(run_id)
            if run.status.is_terminal:
                return run
        finishes, runs = self.finishes, self.runs
        while True:
            finished = finishes.get(run_id)
            if finished is None:
                finished = finishes[run_id] = Finish()
            task = runs.get(run_id)
            if task is not None and task.unfinished():
                await finished.event.wait()  # set by the run's task when the run ends
            else:
                run = await self.store.get_run(run_id)
                if run.status.is_terminal:
                    if run_id not in runs and finishes.get(run_id) is finished:
                        del finishes[run_id]  # no task to pop it: do not keep it
                    return run
                if run_id in runs:
                    await finished.event.wait()
                else:
                    with trio.move_on_after(poll_interval):
                        await finished.event.wait()
            final = finished.take()
            if final is not None:
                return final

    def run_finished(self, run_id: str) -> Finish | None:
        """Wake the run's ``wait_run`` callers; returns their ``Finish`` (None: nobody
        waits) so the task can hand them the final run when it lets go of it."""
        finished = self.finishes.pop(run_id, None)
        if finished is not None:
            finished.event.set()
        return finished

    def task_exited(self, task: RunTask) -> None:
        """The run's task ended (and left the engine's table): keep its final run if nobody
        waited for it, and wake the callers still waiting — a task can end with its run
        unfinished (it crashed, its run or workflow was deleted): they re-read the store
        (and poll)."""
        run_id = task.run_id
        if task.ended is not None:
            # a terminal run stays as its task left it (``ended_runs``)
            self.ended.keep(run_id, task.ended, task.final_mark)
        if run_id in self.finishes:  # (usually not: woken when the run ended)
            self.run_finished(run_id)


__all__ = ["RunWaits"]
