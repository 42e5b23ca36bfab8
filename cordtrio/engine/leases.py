"""Multi-engine mode: run leases, the durable per-run inbox, wake-ups and takeover.

Used when the store implements ``cordtrio.ports.RunLeases``. Each engine has an
``engine_id`` (the lease owner). The rules:

* A ``RunTask`` acquires its run's lease before loading the run. Failing that, another
  engine owns the run: the task *forwards* what it was given (commands and job results) to
  the run's inbox in the store, which wakes the owner, and ends.
* The ``LeaseKeeper`` renews every lease this engine holds in one store call every
  ``ttl/3``. A lease reported lost — or not renewed for a whole ``ttl`` because the store
  did not answer — cancels its run task at once. Writes are fenced too: the task persists
  with ``save_run_changes`` and ``RunChanges.lease_owner`` set to its id, which the store
  refuses (``LeaseLostError``) when the lease is no longer this engine's, so a paused
  engine cannot overwrite its successor's state.
* A run's last write — a write of a terminal run with no job to publish after it — releases
  the lease with it (``RunChanges.release_lease``, asked for by the run task: no release
  of its own when the task lets go), unless the batch it writes applied commands taken
  from the inbox: their acknowledgement, after the write, needs the lease (the task then
  releases it as it lets go). The run leaves the renewals as that write is issued: a
  renewal must not take the lease its own write released for lost and cancel the task
  while it carries out what follows the write (job cancels, hooks). The write stays
  fenced, so nothing is written without the lease, and anything the task would write
  after it is refused (``LeaseLostError``): what it was applying is handed on as for a
  lost lease, to a new task that takes the free lease (``_save_last``: a try whose reply
  was lost).
* The owner is woken (``wait_wakeups``) when something lands in a run's inbox; it takes and
  applies the commands. A new owner drains the inbox before anything else.
* The inbox is at-least-once: taking commands moves them to the run's processing list, and
  they are acknowledged (dropped) only after the batch that applied them is persisted. A
  new owner takes the processing list first, so commands a dead or deposed owner took and
  never persisted are applied again (the core ignores duplicates).
* Every ``ttl/2`` each engine looks for running or waiting runs (and runs with queued or
  unacknowledged commands) whose lease is free and activates them: a crashed engine's runs
  move after its leases expire; an engine that shuts down releases its leases, so they move
  at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable

import trio

from ..errors import CordtrioError, InvalidStateError, LeaseLostError, ProtocolError
from ..model import TimelineEvent, WorkflowRun
from ..ports import LeasedRunCreate, RunChanges, RunLeases, Store, creates_runs_on_write
from ..ratelog import RateLimitedLog
from ..retry import is_transient, retrying
from ..wire_commands import decode_command
from .envelopes import Envelope, Redirect
from .forwarding import forward_as_guest, forward_results
from .host import OwnedRun, RunRouter
from .lease_upkeep import TRUSTED, LeaseUpkeep

log = logging.getLogger("cordtrio.engine")

DEFAULT_LEASE_TTL = 15.0
"""Seconds a run lease lives without renewal (renewed every third of it)."""

CLEANUP_TIMEOUT = 5.0
"""Seconds a finishing run task may spend forwarding leftovers and releasing its lease."""


class LeaseKeeper(LeaseUpkeep):
    """One engine's side of the lease protocol (see the module docstring): the
    multi-engine ``host.Ownership``. ``store`` and ``leases`` are the same object (a store
    implementing ``RunLeases``)."""

    queues_commands = True
    cleanup_timeout = CLEANUP_TIMEOUT
    """A task that ended as it should lets go in its own scope, shielded, with this time
    (``OwnedRun.shielded``; others get a scope of their own here, ``let_go``)."""

    def __init__(self, store: Store, leases: RunLeases, router: RunRouter, owner: str,
                 ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {ttl}")
        self.router = router
        self.runs_store = store
        # ``LeasedRunCreate``, told once: a runtime protocol check walks the protocol's
        # members, and every run submitted would pay for it
        self._leased_create = isinstance(store, LeasedRunCreate)
        # ``ports.CreatingWrites``, told once: a submitted run is created by its first
        # write, which takes the lease with it
        self.creates_on_write: bool = creates_runs_on_write(store)
        self.store = leases
        self.owner = owner
        self.ttl = float(ttl)
        self.held: dict[str, OwnedRun] = {}
        # run tasks whose write releasing the lease was issued (out of ``held``: not renewed)
        self.releasing: dict[str, OwnedRun] = {}
        self.closing: dict[str, trio.Event] = {}
        self.crashed = False
        self._unacked: dict[str, int] = {}  # commands taken per run, not acknowledged
        # runs ``create_run`` took the lease of, with when (Trio's clock), until a task of
        # the run acquires it
        self._leased_at_create: dict[str, float] = {}
        # the tasks of runs not created yet (``OwnedRun.creating``), held from their
        # creating write on (``held``): not renewed before it, nor reported lost
        self._creating: dict[str, OwnedRun] = {}
        # when each such run's creating write was first tried (Trio's clock; ``_create``)
        self._create_sent: dict[str, float] = {}
        # when the latest renewal went through (Trio's clock); and, for a run whose write
        # releasing the lease failed, until when its lease is trusted (``_save_last``)
        self._renewed_at = trio.current_time()
        self._unsure: dict[str, float] = {}
        self._log = RateLimitedLog(log)

    # ------------------------------------------------------------------ Ownership

    async def create_run(self, run: WorkflowRun) -> None:
        """Create the run holding its lease from the start, when the store can
        (``LeasedRunCreate``); else create it unleased (a task acquires the lease)."""
        store = self.runs_store
        if not self._leased_create:
            await store.create_run(run)
        elif await store.create_run_leased(run,  # type: ignore[attr-defined]
                                           self.owner, self.ttl):
            self._leased_at_create[run.id] = trio.current_time()

    def fresh_run(self, created: WorkflowRun | None) -> WorkflowRun | None:
        """The created run if ``create_run`` took its lease with it: nothing can have
        reached the run before (a command queued since wakes this engine). Otherwise
        None: another engine, or a ``Client`` command, may have reached the run between
        its creation and its start, so a new task reads the store once it holds the
        lease."""
        if created is not None and created.id in self._leased_at_create:
            return created
        return None

    def may_unload_idle(self) -> bool:
        """No: letting go would free the lease, and every engine's takeover scan would
        then reload the run every ttl/2."""
        return False

    async def acquire(self, run: OwnedRun) -> bool:
        """Take the run's lease for ``run``'s task, once an earlier task of the same run in
        this engine has let go; False when another engine holds it."""
        run_id = run.run_id
        event = self.closing.get(run_id)
        if event is not None:
            await event.wait()
        if run.creating:  # its creating write takes the lease (``save_changes``)
            self._creating[run_id] = run
            return True
        since = self._leased_at_create.pop(run_id, None)
        if since is not None:
            if trio.current_time() - since < self.ttl / 3:
                self.held[run_id] = run  # taken with the create, a moment ago
                return True
            # taken with the create too long ago (a stalled engine) to be sure it was
            # never lost meanwhile: this task forwards what it was given, and a task that
            # reads the store applies it (the lease, if still ours, wakes this engine)
            return False
        got = await retrying(
            functools.partial(self.store.acquire_lease, run_id, self.owner, self.ttl),
            f"acquire lease of run {run_id}")
        if got:
            self.held[run_id] = run
        return got

    async def take_commands(self, run_id: str) -> list[Envelope]:
        """The run's unacknowledged commands, marked ``queued``; counted for the next
        ``acknowledge`` (a take returns every unacknowledged command, so the count is the
        latest take's). After the run's last write released the lease, commands queued
        since are taken under the lease taken again; taken by another engine, that one was
        woken for them, and this task takes none."""
        task = self.releasing.get(run_id)
        if task is not None:
            if not await retrying(
                    functools.partial(self.store.acquire_lease, run_id, self.owner, self.ttl),
                    f"acquire lease of run {run_id}"):
                return []
            del self.releasing[run_id]
            self.held[run_id] = task
        envelopes, self._unacked[run_id] = await self.take_inbox(run_id)
        for envelope in envelopes:
            envelope.queued = True
        return envelopes

    async def acknowledge(self, run_id: str) -> None:
        count = self._unacked.pop(run_id, 0)
        if count:
            await self.ack(run_id, count)

    def save_changes(self, run: WorkflowRun, changes: RunChanges,
                     events: list[TimelineEvent]) -> Awaitable[None]:
        """The run's state write, fenced by the lease: the store's own call, to be awaited
        (no coroutine of its own: the task's every wait passes through each frame). A
        creating write takes the lease (``_create``); the write of a terminal run releases
        it (see the module docstring)."""
        changes.lease_owner = self.owner
        if changes.created:  # (the create keeps the lease: ``let_go`` releases it)
            changes.release_lease = False
            return self._create(run, changes, events)
        if changes.release_lease:  # the run's last write (``BatchEffects``)
            if not self._unacked.get(run.id):
                return self._save_last(run, changes, events)
            changes.release_lease = False  # acknowledged after it: under the lease
        return self.runs_store.save_run_changes(run, changes, events)

    async def _create(self, run: WorkflowRun, changes: RunChanges,
                      events: list[TimelineEvent]) -> None:
        """The write that creates the run and takes its lease for ``ttl``: its task holds
        the run once it is done. A lease another engine holds (never so for a fresh id)
        is a definite refusal: nothing was written.

        A try whose reply was lost may have created the run and taken the lease all the
        same; the run is not renewed until the write is done, so a later try that finds
        the run its own may find the lease lapsed, and taken over by another engine, which
        may have written the run since: once a try is older than a third of the TTL (as
        ``acquire`` trusts a lease taken with a create), the lease is taken again, or the
        task stops as for a lost lease — its start then goes to the run's owner, and its
        caller gets the run it submitted."""
        changes.lease_ttl = self.ttl
        run_id = run.id
        first = self._create_sent.get(run_id)  # (set: an earlier try failed)
        if first is None:
            self._create_sent[run_id] = trio.current_time()
        try:
            await self.runs_store.save_run_changes(run, changes, events)
        except LeaseLostError as exc:  # (the run did not exist: nothing written)
            raise InvalidStateError(f"run {run_id!r} not created: {exc}") from exc
        except InvalidStateError:
            if first is None:
                raise  # the first try: the id is another run's
            # an earlier try created it, and another engine has written it since
            raise LeaseLostError(f"run {run_id}: created by an earlier try of its first "
                                 f"write, and written since by an engine other than "
                                 f"{self.owner}") from None
        first = self._create_sent.pop(run_id)
        if trio.current_time() - first >= self.ttl / 3 and not await retrying(
                functools.partial(self.store.acquire_lease, run_id, self.owner, self.ttl),
                f"acquire lease of run {run_id}"):
            raise LeaseLostError(f"run {run_id}: created by engine {self.owner}, whose lease "
                                 "lapsed before the write was done")
        task = self._creating.pop(run_id, None)
        if task is not None:
            self.held[run_id] = task

    async def _save_last(self, run: WorkflowRun, changes: RunChanges,
                         events: list[TimelineEvent]) -> None:
        """``save_changes`` of a terminal run: the write releases the lease. The run leaves
        the renewals as it is issued. A try that failed may yet have been applied (its
        reply lost) and released the lease: the next try, while the lease is trusted (it
        cannot have expired and changed hands), takes it again if it is free, rather than
        be refused by its own release (and leave what follows the write — job cancels —
        undone). Free, it was released by that try: another engine may have taken it and
        let go meanwhile, but a finished run is never changed again, so the try writes
        what is stored (its timeline rows, as any write sent again, twice)."""
        run_id = run.id
        task = self.held.pop(run_id, None)
        if task is not None:
            self.releasing[run_id] = task
            # trusted as long as the keeper trusts every lease it holds (``keep``)
            sure_until = self._renewed_at + self.ttl * TRUSTED
        else:
            sure_until = self._unsure.pop(run_id, 0.0)
        try:
            if task is None and trio.current_time() < sure_until and \
                    not await self.store.acquire_lease(run_id, self.owner, self.ttl):
                raise LeaseLostError(f"run {run_id}: lease lost by engine {self.owner} "
                                     "before its last write was done; not written")
            await self.runs_store.save_run_changes(run, changes, events)
        except Exception as exc:
            if is_transient(exc):  # retried (``RunTask._persist``): see above
                self._unsure[run_id] = sure_until
            raise

    async def append_timeline(self, run: WorkflowRun, events: list[TimelineEvent]) -> None:
        fenced = RunChanges(lease_owner=self.owner)
        await self.runs_store.save_run_changes(run, fenced, events)

    async def let_go(self, run: OwnedRun) -> None:
        """Hand what was not applied to the run's owner and release the lease (unless the
        run's last write did). Runs with no checkpoint before the leftovers are taken, so
        no envelope slips between this task and the next one for the run."""
        run_id = run.run_id
        closing = self.closing[run_id] = trio.Event()
        unacked = self._unacked.pop(run_id, 0)
        if self._unsure:
            self._unsure.pop(run_id, None)
        unapplied: list[Envelope] = []
        try:
            # (a run never created is this task's too: nobody else can have it)
            owned = self.held.get(run_id) is run or self.releasing.get(run_id) is run or \
                self._creating.get(run_id) is run
            leftovers = run.take_leftovers()
            unapplied = run.in_flight  # a batch interrupted (lease lost, engine closing)
            for envelope in unapplied:
                if envelope.done is not None and (run.lost or isinstance(
                        envelope.error, LeaseLostError)):
                    envelope.error = Redirect()  # the caller retries: forwarded then
            if owned or self.crashed:
                for envelope in leftovers:  # API callers retry (on a new task, or fail)
                    if envelope.done is not None:
                        envelope.error = envelope.error or Redirect()
                        envelope.done.set()
            if self.crashed:
                return
            if run.shielded:  # in the task's own scope, shielded with the cleanup's time
                await self._clean_up(run, owned, unacked, unapplied, leftovers)
            else:
                # one shielded scope with the cleanup's deadline (not a shield plus a
                # ``move_on_after``: a cancel scope fewer per run)
                with trio.CancelScope(shield=True,
                                      deadline=trio.current_time() + self.cleanup_timeout):
                    await self._clean_up(run, owned, unacked, unapplied, leftovers)
        finally:
            # (``in_flight``'s list, enveloped already: the same object every time)
            for envelope in unapplied or run.in_flight:
                if envelope.done is not None:
                    envelope.done.set()
            if self.closing.get(run_id) is closing:
                del self.closing[run_id]
            closing.set()

    async def _clean_up(self, run: OwnedRun, owned: bool, unacked: int,
                        unapplied: list[Envelope], leftovers: list[Envelope]) -> None:
        """``let_go``'s part that waits on the store, shielded: the lease released and
        what was not applied handed on (to the run's inbox)."""
        run_id = run.run_id
        if owned:
            if run.unloadable is not None or run.crashed:
                await self._drop_poison(run, unacked)
            if run.shielded and self.releasing.get(run_id) is run:
                # ended as it should: every write it issued was done, the last one (of the
                # terminal run) releasing the lease
                del self.releasing[run_id]
            else:
                await self.release(run)
            if unapplied or leftovers:  # (usually neither: a run that ended as it should)
                await forward_results(self, run_id, [*unapplied, *leftovers])
        else:  # never held, or the keeper found the lease gone
            await forward_results(self, run_id, unapplied)
            await forward_as_guest(self, self.runs_store, run_id, leftovers)

    async def _drop_poison(self, run: OwnedRun, unacked: int) -> None:
        """Acknowledge commands nobody can apply, so the run is not re-activated for them
        forever: all of a run that cannot be loaded, or the batch that crashed its task
        (a definite error or a bug; transient store errors are retried inside the batch).
        Anything else taken stays unacknowledged for the next owner."""
        if run.unloadable is not None:
            await self.drop_commands(run.run_id, None, str(run.unloadable))
        elif run.crashed and unacked:
            await self.drop_commands(run.run_id, unacked, "its task crashed")

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.keep)
        await nursery.start(self.wake_loop)

    async def recover(self, nursery: trio.Nursery) -> int:
        count = await self.scan()
        await nursery.start(self.takeover_loop)
        return count

    # ------------------------------------------------------------------ the store

    async def release(self, run: OwnedRun) -> None:
        """Release the lease ``run``'s task holds, or may still hold: a write releasing it
        was issued, but the task did not end as it should (that write may have failed)."""
        run_id = run.run_id
        if self.held.get(run_id) is run:
            del self.held[run_id]
        elif self.releasing.get(run_id) is run:
            del self.releasing[run_id]
        elif self._creating.get(run_id) is run:
            # its creating write failed, or was cut short (the engine closing) not knowing
            # whether it went through: a lease it took is released all the same
            del self._creating[run_id]
            self._create_sent.pop(run_id, None)
        else:
            return
        if self.crashed:
            return  # a simulated crash leaves its leases to expire
        try:
            await self.store.release_lease(run_id, self.owner)
        except Exception:
            log.warning("run %s: could not release its lease (it expires in %gs)",
                        run_id, self.ttl, exc_info=True)

    async def forward(self, run_id: str, data: bytes) -> None:
        """Queue an encoded command in the run's inbox (waking the owner)."""
        await retrying(functools.partial(self.store.push_command, run_id, data),
                       f"queue command for run {run_id}")

    async def take_inbox(self, run_id: str) -> tuple[list[Envelope], int]:
        """Take the run's unacknowledged commands (earlier takes never acknowledged, then
        the inbox) as envelopes, oldest first, and how many were taken — the count to
        acknowledge once they are persisted (undecodable ones included: they are dropped,
        logged, and acknowledged with the rest)."""
        raw = await retrying(functools.partial(self.store.take_commands, run_id),
                             f"take commands of run {run_id}")
        out: list[Envelope] = []
        for data in raw:
            try:
                out.append(Envelope(decode_command(data)))
            except ProtocolError as exc:
                log.warning("run %s: dropping a queued command: %s", run_id, exc)
        return out, len(raw)

    async def ack(self, run_id: str, count: int) -> None:
        """Drop the first ``count`` taken commands: the batch that applied them is
        persisted. ``LeaseLostError`` when the lease is no longer ours (nothing dropped:
        the next owner applies them again)."""
        if count <= 0:
            return
        done = await retrying(
            functools.partial(self.store.ack_commands, run_id, self.owner, count),
            f"acknowledge commands of run {run_id}")
        if not done:
            raise LeaseLostError(
                f"run {run_id}: lease lost by engine {self.owner} before {count} applied "
                "command(s) were acknowledged; the next owner applies them again")

    async def drop_commands(self, run_id: str, count: int | None, why: str) -> None:
        """Acknowledge commands that can never be applied (logged): the first ``count``
        taken, or — ``None`` — every queued one. Failures are logged, not raised (called
        while the task lets go)."""
        try:
            if count is None:
                _, count = await self.take_inbox(run_id)
            if count:
                log.warning("run %s: dropped %d queued command(s): %s", run_id, count, why)
                await self.ack(run_id, count)
        except CordtrioError as exc:
            log.warning("run %s: could not drop queued commands: %s", run_id, exc)

    def crash(self) -> None:
        """Test hook: behave like a crashed engine — stop renewing, and leave leases and
        inboxes as they are when the engine closes (they expire after ``ttl``)."""
        self.crashed = True


__all__ = ["DEFAULT_LEASE_TTL", "LeaseKeeper"]
