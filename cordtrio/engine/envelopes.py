"""What travels between the engine's API, its result consumer and a run's task: envelopes
(an event plus a way to wait for it), what a new task may start from (``Preload``), and
how ``wait_run`` learns that a run finished (``Finish``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import trio

from ..core.events import Event
from ..errors import CordtrioError
from ..model import Workflow, WorkflowRun


@dataclass(slots=True)
class Envelope:
    """An event for a run, and (for API calls) a way to wait until it is applied."""

    event: Event
    done: trio.Event | None = None
    error: BaseException | None = None
    fired_at: datetime | None = None  # for timers: the wall time they were armed for
    drain: bool = False  # multi-engine: apply the run's inbox in the store (event unused)
    queued: bool = False  # multi-engine: taken from the run's inbox (acknowledged there)


@dataclass(slots=True)
class Preload:
    """What a new run task may start from instead of reading the store: the workflow
    ``submit`` just read, and (single-engine only) the run it just created."""

    run: WorkflowRun | None
    workflow: Workflow


class Finish:
    """``wait_run``'s side of a run finishing: woken when it ends; ``run`` is the task's final
    state, handed over (once) after the task let go of the run, so a waiter need not read
    the run back from the store."""

    __slots__ = ("event", "run")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.run: WorkflowRun | None = None

    def take(self) -> WorkflowRun | None:
        """The final run, to the first caller only (it may mutate what it gets)."""
        run, self.run = self.run, None
        return run


class Redirect(CordtrioError):
    """The run's task ended before applying the envelope; deliver it again."""


__all__ = ["Envelope", "Finish", "Preload", "Redirect"]
