"""What travels between the engine's API, its result consumer and a run's task: envelopes
(an event plus a way to wait for it: ``Reply``), or bare events and job results nobody
waits for (``Item``), a run task's ``Mailbox``, what a new task may start from
(``Preload``), and how ``wait_run`` learns that a run finished (``Finish``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import outcome
import trio

from ..core.events import Event, LoadedOutput, ResultReceived
from ..errors import CordtrioError
from ..model import Workflow, WorkflowRun
from ..protocol import JobResult
from .effects import output_of

# Trio's calls, looked up once (``trio.lowlevel.x`` costs two lookups more on every call)
_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


class _Woken(outcome.Outcome[None]):
    """What a woken waiter's wait returns: None, as the ``outcome.Value(None)`` Trio makes
    for every ``reschedule`` that names no outcome — but one object for every wake-up (a
    ``Value`` is built, checked and marked used for each one; a constant None needs none
    of that)."""

    __slots__ = ()

    def unwrap(self) -> None:
        return None

    def send(self, gen: Generator[Any, None, Any]) -> Any:
        return gen.send(None)

    async def asend(self, agen: AsyncGenerator[Any, None]) -> Any:
        return await agen.asend(None)


_WOKEN = _Woken()


class Reply:
    """An API caller waiting for its envelope to be applied: ``trio.Event`` for one waiter,
    without a ``ParkingLot``, and with ``interrupt`` for the engine's stall watchdog."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """The envelope is applied (or answered with its ``error``): wake the caller."""
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _reschedule(waiter, _WOKEN)

    def interrupt(self, error: BaseException) -> None:
        """Raise ``error`` in the waiting caller now; the envelope stays with the run task
        (it is applied later, nobody waits for it then)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter, outcome.Error(error))

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    def wait(self) -> Awaitable[None]:
        """Until ``set``: await it at once. A cancellation point (a schedule point only when
        it waits). Trio's own wait is returned, not wrapped in a coroutine of ours: one
        frame less to resume on every wake-up."""
        if self._set:
            return _checkpoint_if_cancelled()
        if self._waiter is not None:
            raise RuntimeError("a Reply has one waiter")
        self._waiter = _current_task()
        return _wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


@dataclass(slots=True)
class Envelope:
    """An event for a run, and (for API calls) a way to wait until it is applied."""

    event: Event
    done: Reply | None = None
    error: BaseException | None = None
    fired_at: datetime | None = None  # for timers: the wall time they were armed for
    drain: bool = False  # multi-engine: apply the run's inbox in the store (event unused)
    queued: bool = False  # multi-engine: taken from the run's inbox (acknowledged there)


class ResultRead:
    """A job result from the bus whose output (SPEC §8) is being read for its run task
    before the task wakes (``Engine._on_job_result``): it waits in the task's mailbox, in its
    place among the other items, without waking the task; the read's reply fills it
    (``loaded``) and wakes the task, which then has the result and its output together
    (one wake-up per result, not one for the result and one for its read).

    ``output`` stays None if the read failed: the task then loads the output itself, as
    for a bare ``JobResult`` (with its retries and errors). A task that takes it before
    its reply waits for that (``wait``): results and commands are applied in the order
    they came. Handed on unapplied (``enveloped``), it is the bare result again."""

    __slots__ = ("_mailbox", "_waiter", "done", "output", "result")

    def __init__(self, result: JobResult, mailbox: Mailbox) -> None:
        self.result = result
        self.output: LoadedOutput | None = None
        self.done = False  # the read answered (or failed)
        self._mailbox = mailbox
        self._waiter: trio.lowlevel.Task | None = None

    def __repr__(self) -> str:  # (a log line names the job, as a bare result's does)
        return f"ResultRead({self.result!r})"

    def loaded(self, data: bytes | None) -> None:
        """The read's reply (None: it failed); later calls are ignored. Wakes the run task
        (never raises: called by the payload store's reader)."""
        if self.done:
            return
        self.done = True
        if data is not None:
            try:
                output: LoadedOutput | None = output_of(data)
            except Exception:  # (not expected) the task reads it itself
                output = None
            self.output = output
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            _reschedule(waiter, _WOKEN)
        else:
            self._mailbox.poke()

    def wait(self) -> Awaitable[None]:
        """Until ``loaded`` (the run task took it before its reply): await it at once."""
        if self.done:
            return _checkpoint_if_cancelled()
        self._waiter = _current_task()
        return _wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


Item = Envelope | Event | JobResult | ResultRead
"""What a ``Mailbox`` holds: an ``Envelope``, or a bare event that nobody waits for and that
is neither a timer nor a drain request, or a bare ``JobResult`` (a job result from the bus:
no envelope and no ``ResultReceived`` built for it, nothing to answer: the run task hands
it to the core's ``decide_result`` as it is), or such a result with its output being read
(``ResultRead``). A run task puts a bare item in an envelope (a job result as
``ResultReceived``) only when it hands it on (``RunTask.take_leftovers``, ``in_flight``)."""


class Mailbox:
    """A run task's inbox: envelopes are put without waiting, and a task waiting for one is
    woken directly (no memory channel: no buffer object, no ``ParkingLot`` per run).
    Unbounded on purpose (see docs/architecture.md, *Backpressure*). One reader."""

    __slots__ = ("_reader", "items")

    def __init__(self) -> None:
        self.items: list[Item] = []
        """What waits to be taken, oldest first. Its one reader (the run task) takes them
        without a call, ``batch, mailbox.items = mailbox.items, []`` (as ``take_all``
        does): the list itself is handed over, and puts go to the new one. Nobody else
        changes it. Once closed, a ``_Closed`` list that refuses every put."""
        self._reader: trio.lowlevel.Task | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def closed(self) -> bool:
        return self.items.__class__ is _Closed

    def put(self, item: Item) -> None:
        """Hand ``item`` over; ``trio.BrokenResourceError`` once the task closed it (the
        closed mailbox's list refuses it: no check of our own on every put)."""
        self.items.append(item)
        reader = self._reader
        if reader is not None:
            self._reader = None
            _reschedule(reader, _WOKEN)

    def hold(self, item: Item) -> None:
        """``put`` without waking the task: for a ``ResultRead``, which wakes it once
        read (``trio.BrokenResourceError`` once closed, as ``put``)."""
        self.items.append(item)

    def poke(self) -> None:
        """Wake the waiting task with nothing new (a timer of its run is due)."""
        reader = self._reader
        if reader is not None:
            self._reader = None
            _reschedule(reader, _WOKEN)

    def take_all(self) -> list[Item]:
        """Everything waiting, oldest first (maybe nothing): the caller's to keep."""
        items = self.items
        if not items:
            return []
        self.items = []
        return items

    def close(self) -> list[Item]:
        """No more puts; returns what was never taken."""
        items, self.items = self.items, _Closed()
        return items if items.__class__ is not _Closed else []

    def wait(self) -> Awaitable[None]:
        """Until something is in the mailbox: await it at once (Trio's own wait, as in
        ``Reply.wait``). Only the run task waits; it is woken by the next ``put`` (cancel its
        scope, or a deadline around this call, to stop waiting). When something is there
        already, only a cancellation point."""
        if self.items:
            return _checkpoint_if_cancelled()
        self._reader = _current_task()
        return _wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._reader = None
        return trio.lowlevel.Abort.SUCCEEDED


class _Closed(list[Item]):
    """A closed mailbox's items: always empty, every put refused."""

    __slots__ = ()

    def append(self, item: Item) -> None:
        raise trio.BrokenResourceError("the run task has let go of its mailbox")


@dataclass(slots=True)
class Preload:
    """What a new run task may start from instead of reading the store: the workflow
    ``submit`` just read, and the run it just created (when nothing else can have reached
    it: ``Ownership.fresh_run``) or built without writing it (``creating``)."""

    run: WorkflowRun | None
    workflow: Workflow
    creating: str = ""
    """Non-empty: ``run`` is not in the store yet; the task's first write creates it, with
    this token (``RunChanges.created``)."""


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


def enveloped(item: Event | JobResult | ResultRead) -> Envelope:
    """A bare mailbox item in an envelope, to hand on (to another engine, as a leftover): a
    bare job result as the event it stands for, ``ResultReceived``; one being read as the
    bare result (whoever applies it reads its output)."""
    if isinstance(item, ResultRead):
        item = item.result
    return Envelope(ResultReceived(item) if isinstance(item, JobResult) else item)


def has_drain(batch: list[Item]) -> bool:
    """A request to apply the run's queued commands is among ``batch`` (multi-engine)."""
    for item in batch:  # noqa: SIM110 (any() and a generator cost more, every batch)
        if isinstance(item, Envelope) and item.drain:
            return True
    return False


def without_drains(batch: list[Item]) -> list[Item]:
    return [item for item in batch if not (isinstance(item, Envelope) and item.drain)]


__all__ = ["Envelope", "Finish", "Item", "Mailbox", "Preload", "Redirect", "Reply",
           "ResultRead", "enveloped", "has_drain", "without_drains"]
