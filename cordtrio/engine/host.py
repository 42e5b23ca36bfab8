"""The narrow interfaces between a run task and the rest of the engine.

A ``RunTask`` (``run_task``) sees the engine only through ``RunHost``: where its plan, bus,
payloads, clock and hooks come from, and whom it tells that the run finished or that it
exited. Who *owns* a run is a strategy (``Ownership``), chosen once when the engine opens:

* ``ownership.SingleEngine`` — the engine is alone on its store: every run is its own, there
  is nothing to acquire, renew or forward;
* ``leases.LeaseKeeper`` — several engines share the store (multi-engine mode): a run is
  driven by the holder of its lease, and whatever reaches another engine is forwarded.

The strategies see a run task through ``OwnedRun`` and the engine through ``RunRouter``, so
no module here imports the engine (``supervisor``) or the run task. ``RunWiring`` is what
the run tasks of one host use of it, picked once for all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import trio

from ..core.events import LoadedOutput
from ..core.plan import Plan
from ..json_payloads import StorePath, path_for
from ..model import StepStatus, TimelineEvent, Workflow, WorkflowRun
from ..ports import Bus, Clock, ConfigProvider, PayloadStore, RunChanges, own_call
from ..protocol import JobRequest
from .effects import packets_now
from .envelopes import Envelope, Finish
from .timers import Alarm

StepDispatchedHook = Callable[[str, str, str], Any]
StepFinishedHook = Callable[[str, str, StepStatus], Any]


class OwnedRun(Protocol):
    """What an ownership strategy sees of a run task."""

    @property
    def run_id(self) -> str: ...

    @property
    def lost(self) -> bool:
        """The lease was lost while the task held the run: it stopped acting at once."""

    @property
    def crashed(self) -> bool:
        """The task ended with an error (a bug, or a definite store error)."""

    @property
    def unloadable(self) -> BaseException | None:
        """Why the run or its workflow could not be loaded (None: it was)."""

    @property
    def creating(self) -> str:
        """Non-empty while the run is not in the store yet: the task's first write creates
        it (``RunChanges.created``, this text its token); nothing to acquire before it."""

    @property
    def error(self) -> BaseException | None:
        """What ended the task, for the callers still waiting (None: nothing went wrong)."""

    @property
    def shielded(self) -> bool:
        """``let_go`` is called within the task's own cancel scope, shielded from outside
        cancellation with the ownership's ``cleanup_timeout`` as its deadline (a task that
        ended as it should, over an ownership that has one): it needs no scope of its own."""

    @property
    def in_flight(self) -> list[Envelope]:
        """The batch being applied when the task stopped (empty between batches)."""

    def take_leftovers(self) -> list[Envelope]:
        """Close the task's mailbox and return what was never taken from it."""

    def fail_leftovers(self, error: BaseException | None = None) -> None:
        """Close the mailbox and answer every envelope left in it with ``error`` (default:
        ``Redirect``, the caller delivers again)."""

    def lease_lost(self) -> None:
        """Stop acting on the run now (its scope is cancelled)."""


class RunRouter(Protocol):
    """The engine's routing, as ownership strategies use it."""

    def deliver(self, run_id: str, envelope: Envelope) -> None:
        """Hand ``envelope`` to the run's task, activating one if needed; never blocks."""

    def is_active(self, run_id: str) -> bool:
        """The run has a task in this engine."""


class Ownership(Protocol):
    """Who drives a run: acquire it, save under it, take its queued commands, let it go."""

    queues_commands: bool
    """Commands can be queued for a run in the store: a task acknowledges every batch it
    applied (``acknowledge``). False: ``take_commands`` and ``acknowledge`` do nothing."""


    def create_run(self, run: WorkflowRun) -> Awaitable[None]:
        """Create the run ``submit`` built (``store.create_run``; in multi-engine mode taking
        its lease in the same write when the store can: ``ports.LeasedRunCreate``): await
        the result (an implementation may hand over the store's own call)."""

    creates_on_write: bool
    """The store can create a run with its first write (``ports.CreatingWrites``):
    ``submit`` then writes nothing, and the run task's first write creates the run (in
    multi-engine mode taking its lease with it)."""

    def fresh_run(self, created: WorkflowRun | None) -> WorkflowRun | None:
        """The run ``submit`` just created, if a new task may start from it instead of
        reading the store (None: it must read). A task that starts from it takes no
        commands from the store first: none can be queued for it yet."""

    def may_unload_idle(self) -> bool:
        """Whether a run waiting on nothing but a command may end its task (W4 memory)."""

    async def acquire(self, run: OwnedRun) -> bool:
        """Take the run for ``run``'s task; False when another engine drives it. A run not
        created yet (``OwnedRun.creating``) is taken by its creating write: held from
        here on, with nothing asked of the store."""

    async def take_commands(self, run_id: str) -> list[Envelope]:
        """The commands queued for the run in the store, marked ``queued`` (none when
        commands cannot be queued); acknowledged by ``acknowledge`` once applied."""

    async def acknowledge(self, run_id: str) -> None:
        """The batch that applied the commands taken last is persisted: drop them (called
        after a batch that took commands, not after every batch)."""

    def save_changes(self, run: WorkflowRun, changes: RunChanges,
                     events: list[TimelineEvent]) -> Awaitable[None]:
        """Persist ``changes`` and the timeline ``events`` in one write, as the run's
        driver (refused with ``LeaseLostError`` when it no longer is): await the result
        (an implementation may hand over the store's own call, one coroutine fewer). A
        creating write (``changes.created``) that the store refuses fails with a definite
        error (``InvalidStateError``: the run exists, or another engine holds its lease)."""

    async def append_timeline(self, run: WorkflowRun, events: list[TimelineEvent]) -> None:
        """Append timeline ``events`` of a batch that changed nothing else."""

    async def let_go(self, run: OwnedRun) -> None:
        """The task is ending: answer or hand over what it did not apply, give the run up."""

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the strategy's background tasks (renewals, wake-ups) in ``nursery``."""

    async def recover(self, nursery: trio.Nursery) -> int:
        """Activate the runs this engine should drive after a start; returns how many (and
        keeps doing so in ``nursery`` if the strategy takes runs over)."""


class RunHost(Protocol):
    """Everything a run task needs from the engine."""

    @property
    def bus(self) -> Bus: ...

    @property
    def payloads(self) -> PayloadStore | None: ...

    @property
    def config(self) -> ConfigProvider | None: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def ownership(self) -> Ownership: ...

    @property
    def alarm(self) -> Alarm:
        """Wakes the task at its next timer deadline."""

    async def load_run(self, run_id: str) -> WorkflowRun:
        """The stored run (a run whose data cannot be read is marked failed first)."""

    async def mark_unreadable(self, run_id: str, error: Exception) -> bool:
        """Fail a run whose stored data cannot be read; True when the store did it."""

    async def plan_for(self, workflow_id: str, workflow: Workflow | None = None) -> Plan:
        """The workflow compiled for execution (cached per version)."""

    @property
    def on_step_dispatched(self) -> StepDispatchedHook | None:
        """The hook a task calls after publishing a new job (its failure is logged)."""

    @property
    def on_step_finished(self) -> StepFinishedHook | None:
        """The hook a task calls after persisting a finished step (its failure is logged)."""

    def run_finished(self, run_id: str) -> Finish | None:
        """The run is terminal: wake its ``wait_run`` callers; their ``Finish`` (None:
        nobody waits) gets the final run once the task lets go."""

    def run_exited(self, task: object) -> None:
        """The task is ending: route further envelopes to a new task."""


class RunWiring:
    """What every run task of one engine uses, picked once for all of them (not per run):
    the ownership's calls, the bus's publish without awaiting, the payload store's calls,
    the hooks and the clock."""

    __slots__ = ("bus", "cleanup", "config", "final_mark", "now", "on_dispatched",
                 "on_finished",
                 "output", "owner", "path", "publish_now", "queues_commands", "quick",
                 "save_now", "stage_payloads", "submit_now")

    def __init__(self, host: RunHost) -> None:
        owner = self.owner = host.ownership
        # the store writes job inputs with the run (``RunChanges.payloads``): an optional
        # host attribute, set by the engine when its store commits its payload store
        self.stage_payloads: bool = getattr(host, "payloads_in_changes", False)
        # ``Ownership.queues_commands``: drain requests come, applied batches are
        # acknowledged; not for an engine alone on its store (nothing to do for either)
        self.queues_commands: bool = getattr(owner, "queues_commands", True)
        # ``Ownership.cleanup_timeout`` (optional): seconds a task that ended as it should
        # has to let go of its run, shielded from outside cancellation, in its own scope
        # (``RunTask.run``; None: ``let_go`` needs no such time, or takes care of it)
        self.cleanup: float | None = getattr(owner, "cleanup_timeout", None)
        # ``SingleEngine.save_changes_now``: a store write not awaited (in-process store)
        self.save_now: Callable[[WorkflowRun, RunChanges, list[TimelineEvent]], None] | \
            None = getattr(owner, "save_changes_now", None)
        self.bus = host.bus
        self.publish_now = own_call(host.bus, "publishes_now", "publish_now")  # PublishNow
        # ``MemoryBus.submit_now``: a job request handed over bare, no packet built for it
        # (the bus keeps the packet's fields), under ``publish_now``'s rules
        # (else, on a bus that publishes at once, ``effects.packets_now``: the request
        # in a packet, published at once, under the same terms)
        # (``PublishNow.publishes_requests_now``: a bus that takes a worker's results at
        # once but refuses every job request, as an nng client, gets none)
        self.submit_now: Callable[[JobRequest, str, datetime, str], bool] | None = \
            own_call(host.bus, "publishes_now", "submit_now") or (
                packets_now(self.publish_now) if self.publish_now is not None
                and getattr(host.bus, "publishes_requests_now", True) else None)
        # the payload store's calls (``json_payloads.path_for``): an optional host
        # attribute, set by the engine for all its run tasks
        payloads = host.payloads
        self.path: StorePath | None = getattr(host, "payload_path", None) or (
            path_for(payloads) if payloads is not None else None)
        self.config = host.config
        self.on_dispatched = host.on_step_dispatched
        self.on_finished = host.on_step_finished
        self.now: Callable[[], datetime] = host.clock.now
        # the time and the store's count of deletions as a run's last write goes
        # (``ended_runs.EndedRuns.mark``: an optional host attribute, set by the engine)
        self.final_mark: Callable[[], tuple[float, int] | None] = getattr(
            host, "ended_mark", _unmarked)
        # the output a result payload read in process is loaded into, for the core
        # (``effects.load_output_now``): one per engine, as a task loads and decides a
        # result without an await between them, and the core keeps nothing of it
        self.output = LoadedOutput()
        # no configuration to look up for a job: ``RunTask._apply_result`` carries out a
        # plain result's effects itself (inputs stored at once or staged for the write,
        # the write, the jobs handed over, the hooks)
        self.quick: bool = self.config is None and self.submit_now is not None


def _unmarked() -> None:
    return None  # (no mark: the store is asked)


__all__ = ["OwnedRun", "Ownership", "RunHost", "RunRouter", "RunWiring",
           "StepDispatchedHook", "StepFinishedHook"]
