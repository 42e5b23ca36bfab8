"""One Trio task per active run: the only writer of that run's state.

The task receives envelopes (commands) and bare job results in its ``Mailbox`` (unbounded;
a waiting task is woken by the put), folds them into the run with the pure core
(``decide``; a bare job result with ``decide_result``: no event built for it), and
executes the effects in a fixed order per batch (``_process``, then ``_carry_out``: one
pass over them before the write, one over the rest after it; a batch of one job result,
the commonest, on a short path, ``_apply_result``, tested against the general one):

1. load result payloads the core needs (before deciding);
2. *pre-commit* effects whose outcome the core must know before anything is persisted:
   storing job payloads and publishing notify alerts (their failures are fed back);
3. persist the changed parts of the run and the timeline (retried until it works; the
   first write of a run ``submit`` did not write creates it, in ``_carry_out``);
4. publish job requests (a failure is fed back and persisted in a further round) and job
   cancels; call hooks; arm timers;
5. acknowledge the envelopes (read-your-writes for the public API).

Timers live in the task (``timers.Timers``: a heap of deadlines on Trio's clock), so
they end with the task — the run's lifetime — all at once. The task runs in its own
cancel scope, the run's cancellation in the shell: cancelling it (a lost lease, in
multi-engine mode) stops the run's task at once.
How a batch's effects are carried out (and the short path) is in ``batches``, their I/O
in ``effects``; envelopes and the API's hand-over objects in ``envelopes``; what every
task of an engine shares in ``host.RunWiring``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

import trio

from ..core.events import Effect, Event, LoadedOutput, Recover, ResultReceived
from ..core.machine import decide, decide_in, decide_result, decide_result_in
from ..core.plan import Plan
from ..core.state import RunState, Tx
from ..errors import CordtrioError, CorruptDataError, LeaseLostError
from ..model import RunStatus, StepStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges
from ..protocol import JobResult, JobStatus
from ..ratelog import rate_limited
from .batches import BatchEffects
from .effects import load_output, load_output_now
from .envelopes import (
    Envelope,
    Finish,
    Item,
    Mailbox,
    Preload,
    Redirect,
    ResultRead,
    enveloped,
    has_drain,
    without_drains,
)
from .host import RunHost, RunWiring
from .timers import Timers

log = logging.getLogger("cordtrio.engine")


class RunTask(BatchEffects):
    """Owns one run while it is active in this engine (``host.OwnedRun`` for the
    engine's ownership strategy)."""

    # what most tasks never change, as class defaults: not set again for every run
    _created = False  # started from the run ``submit`` created, not the store
    creating = ""  # the run is not stored yet: the token of the write to create it
    _finish: Finish | None = None  # wait_run callers woken by this task's finish
    ended: WorkflowRun | None = None  # the final run, when nobody waited for it
    _alarm_at = -1.0  # the deadline the engine's alarm will poke the mailbox at
    plan: Plan | None = None
    state: RunState | None = None
    lost = False  # the lease is gone (multi-engine): stop acting at once
    unloadable: CordtrioError | None = None  # the run or workflow cannot load
    crashed = False
    error: BaseException | None = None  # what crashed the task
    shielded = False  # letting go in the run's own scope, shielded (``OwnedRun.shielded``)
    final_mark: tuple[float, int] | None = None  # as the last write went (``EndedRuns``)

    def __init__(self, host: RunHost, run_id: str, preload: Preload | None = None,
                 wiring: RunWiring | None = None) -> None:
        self.host = host
        self._wiring = wiring = wiring or RunWiring(host)
        self.owner = wiring.owner
        self.run_id = run_id
        self._preload = preload
        self.mailbox = Mailbox()
        self.scope = trio.CancelScope()  # the run's cancellation (a lost lease)
        self._timers = Timers()
        self._armed = self._timers.heap  # truthy while a timer is armed
        self._batch: list[Item] = _NOTHING  # the batch being applied (``in_flight``)

    # ----------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Take the run (``Ownership.acquire``: in multi-engine mode, its lease), load it,
        then apply envelopes until the run is terminal and idle; let go of the run at the
        end (``Ownership.let_go``)."""
        try:
            with self.scope as scope:
                await self._loop()
                state = self.state
                if state is not None and not self.lost and state.run.status.is_terminal:
                    # let go of a finished run: hand it to its waiters, or (nobody waited)
                    # to the engine, for the next ``wait_run`` (``Engine.run_exited``)
                    if self._finish is not None:
                        self._finish.run = state.run
                    else:
                        self.ended = state.run
                cleanup = self._wiring.cleanup
                if cleanup is not None and self.unloadable is None and \
                        not scope.cancel_called:
                    # Ended as it should (not cancelled, no error): let go of the run in
                    # its own scope, now shielded from outside cancellation and given the
                    # cleanup's time (``Ownership.cleanup_timeout``), rather than in a
                    # scope of the ownership's own (~700 bytecodes per run on Trio's side)
                    scope.shield = True
                    scope.deadline = trio.current_time() + cleanup
                    self.shielded = True
                    self.host.run_exited(self)
                    await self.owner.let_go(self)
        except LeaseLostError as exc:
            if self.shielded:  # from ``let_go``, after the run ended: as in ``finally``
                raise
            self.lost = True
            rate_limited(log).warning("lease lost", "run %s: %s; another engine drives it "
                                      "now", self.run_id, exc)
        except Exception as exc:  # a shell bug must not take the engine (other runs) down
            if self.shielded:  # (``let_go``'s own error goes on, as from ``finally``)
                raise
            if self.creating and isinstance(exc, CordtrioError):
                # the store refused to create the run (its id is taken, say): nothing was
                # written, and ``submit`` fails with the reason; nothing crashed
                self.error = exc
                return
            if not isinstance(exc, CorruptDataError) or not await self.host.mark_unreadable(
                    self.run_id, exc):
                log.exception("run %s: task crashed; the run stays in the store", self.run_id)
            self.crashed = True
            self.error = exc
        finally:
            if not self.shielded:  # (else let go already, in the run's own scope)
                self.host.run_exited(self)
                await self.owner.let_go(self)

    def unfinished(self) -> bool:
        """Loaded here and not terminal: ``wait_run`` may wait without reading the store."""
        return self.state is not None and not self.state.run.status.is_terminal

    def lease_lost(self) -> None:
        """The keeper found the lease gone: stop acting on the run now."""
        self.lost = True
        self.scope.cancel()

    @property
    def in_flight(self) -> list[Envelope]:
        """The batch being applied when the task stopped (empty between batches), its bare
        events and job results in envelopes (once: ``let_go`` may answer them)."""
        batch = self._batch
        if not batch:  # (between batches, as a task that ended as it should)
            return cast(list[Envelope], batch)
        for i, item in enumerate(batch):
            if not isinstance(item, Envelope):
                batch[i] = enveloped(item)
        return cast(list[Envelope], batch)

    def take_leftovers(self) -> list[Envelope]:
        return [item if isinstance(item, Envelope) else enveloped(item)
                for item in self.mailbox.close()]

    def fail_leftovers(self, error: BaseException | None = None) -> None:
        """Answer envelopes that will never be applied here (the run is gone or ended); a
        bare event (a job result) has nobody to answer."""
        for item in self.mailbox.close():
            if isinstance(item, Envelope):
                item.error = item.error or error or Redirect()
                if item.done is not None:
                    item.done.set()

    async def _load(self) -> bool:
        preload, self._preload = self._preload, None
        if preload is not None and preload.creating:
            self.creating = preload.creating  # (held without asking the store: ``acquire``)
        if not await self.owner.acquire(self):
            return False  # another engine owns the run: ``let_go`` forwards to it
        try:
            if preload is not None and preload.run is not None:
                run = preload.run
                self._created = True
            else:
                run = await self.host.load_run(self.run_id)
            plan = await self.host.plan_for(
                run.workflow_id, preload.workflow if preload is not None else None)
        except CordtrioError as exc:
            self.fail_leftovers(exc)
            self.unloadable = exc  # no await here: the task is still the run's route
            return False
        self.plan = plan
        self.state = RunState(run)
        return True

    async def _loop(self) -> None:
        """Load the run, then apply batches of envelopes until it is terminal and idle."""
        if not await self._load():
            return
        assert self.state is not None
        owner = self.owner
        # Re-arm the timers a stored run implies before anything else touches it (a no-op
        # for a run that has not started); then apply the commands queued for the run in
        # the store (multi-engine: while nobody held it, and first those an earlier owner
        # took and never acknowledged — at-least-once: it may have died or lost the lease
        # before persisting them). The take covers any drain request already here (not
        # one arriving during it: that one is applied next).
        ready = self._take_ready()
        queues_commands = self._wiring.queues_commands  # else no drain requests, no acks
        # commands were taken from the store since the last acknowledgement: the next
        # batch done acknowledges them (``Ownership.acknowledge``; a batch that took none
        # has nothing to acknowledge)
        taken = False
        if self._created and not (queues_commands and has_drain(ready)):
            batch = ready  # a run submit just created: nothing queued for it (fresh_run)
        else:
            inbox: list[Item] = [*await owner.take_commands(self.run_id)]
            taken = queues_commands
            batch = inbox + without_drains(ready)
        if not self._created:  # a run ``submit`` just created has nothing to re-arm yet
            batch.insert(0, Envelope(Recover()))
        mailbox = self.mailbox
        timers = self._timers
        armed = self._armed  # the timers' heap: truthy while a timer is armed
        plan, state = self.plan, self.state
        assert plan is not None
        run = state.run  # the core changes it in place, never replaces it
        # the working area of each batch's first event, renewed after each (``Tx.renew``)
        tx = Tx(plan, state, _NO_TIME)
        while True:
            if len(batch) == 1 and batch[0].__class__ in _RESULTS:
                # most batches: one job result from the bus, alone (``_apply_result``; no
                # drain request, nothing else to tell apart)
                # (the item not kept in a name: it would stay alive while the task waits)
                try:
                    await self._apply_result(batch[0], tx)  # type: ignore[arg-type]
                except BaseException:
                    self._batch = batch  # ``in_flight``, for ``Ownership.let_go``
                    raise
            else:
                if queues_commands and has_drain(batch):
                    batch = without_drains(batch)
                    batch += await owner.take_commands(self.run_id)
                    taken = True
                    if not batch:  # nothing, or only undecodable commands (dropped, logged)
                        taken = False
                        await owner.acknowledge(self.run_id)
                if batch:
                    try:
                        await self._process(batch, plan, state, tx)
                    except BaseException:
                        self._batch = batch
                        raise
            if batch:
                # The working area renewed for the next batch, now that this one is done
                # with it (the next only sets its time): nothing of this batch is kept
                # alive by it while the run waits (its effects and rows, the jobs' inputs).
                tx.renew(_NO_TIME)
                if taken:  # persisted: the store may forget them
                    taken = False
                    await owner.acknowledge(self.run_id)
                if self.creating:
                    # the batch (the start ``submit`` sent) wrote nothing, so created
                    # nothing: the core refused it, and its caller was told why
                    return
            # The next batch: what came in meanwhile (usually nothing: once or twice per
            # step) and the timers due; else the task is idle and waits. The mailbox's one
            # reader takes its items by handing it a new list (``Mailbox.items``): no call.
            if mailbox.items:
                batch, mailbox.items = mailbox.items, []
            elif armed and (batch := timers.due()):
                continue
            else:
                status = run.status
                if status.is_terminal:
                    return  # idle and finished: the task ends, state stays in the store
                if status is _WAITING and self._parked() and owner.may_unload_idle():
                    # idle until approved: the next envelope reloads it (W4 memory)
                    return
                if armed:
                    self._set_alarm()
                # nor the engine's last loaded output (a task fills it and decides with no
                # await between: none is using it now), nor the last batch (a result read
                # early holds its output)
                self._wiring.output.value = None
                batch = _NOTHING  # (replaced below, never added to)
                await mailbox.wait()
                batch, mailbox.items = mailbox.items, []  # (empty: a stale alarm poke)
            if armed:
                batch += timers.due()

    def _parked(self) -> bool:
        """Waiting on an approval with no timer armed and no job or alert in flight: nothing
        but a command can move the run, so its task (channels, scopes, the loaded run) need
        not stay in memory. Whatever comes next activates a new task that reloads the run;
        a run with timers keeps its task, which owns them."""
        assert self.state is not None
        run = self.state.run
        if run.status != RunStatus.WAITING or self._armed:
            return False
        return all(sr.status != StepStatus.RUNNING for sr in run.steps.values())

    def _take_ready(self) -> list[Item]:
        batch = self.mailbox.take_all()
        if self._armed:
            batch.extend(self._timers.due())
        return batch

    def _set_alarm(self) -> None:
        """Have the engine's alarm poke the mailbox at the next timer deadline (once per
        deadline, not per wait)."""
        deadline = self._timers.next_deadline
        if deadline != self._alarm_at:
            self._alarm_at = deadline
            self.host.alarm.set(deadline, self.mailbox)

    # -------------------------------------------------------------------- one batch

    async def _process(self, batch: list[Item], plan: Plan, state: RunState, tx: Tx
                       ) -> None:
        """Apply one batch: decide each event of ``batch`` in turn, carry out all their
        effects together in the order of the module docstring (one pass over them before
        the write, one over the rest after it), then answer the batch's API callers.
        Feedback (a payload not stored, a job not published, an alert's outcome) goes back
        through the core, and its effects are carried out too, until nothing is left.

        The effects are carried out by ``_carry_out`` (a batch of one job result from the
        bus, the commonest, is applied by ``_apply_result`` instead). Effects are told
        apart by exact type: the core builds each of its own class, and ``x.__class__ is
        C`` is an inline check where ``isinstance`` is a call."""
        wiring = self._wiring
        path, run_id = wiring.path, self.run_id
        effects: list[Effect]
        rows: list[TimelineEvent]  # the timeline rows, written with the changes
        changes: RunChanges | None = None  # None until an event is decided
        now: datetime  # when the core decided: the time of the bus messages sent
        waiting = False  # an API caller waits for an envelope of the batch
        for item in batch:
            output: LoadedOutput | None = None
            if item.__class__ is JobResult:  # a job result from the bus: nobody waits for it
                envelope: Envelope | None = None
                result: JobResult | None = item  # type: ignore[assignment]
            elif item.__class__ is ResultRead:  # one with its output read (or failing to)
                envelope = None
                if not item.done:  # type: ignore[union-attr]
                    await item.wait()  # type: ignore[union-attr]
                result = item.result  # type: ignore[union-attr]
                output = item.output  # type: ignore[union-attr]
            else:
                event: Event
                if isinstance(item, Envelope):
                    envelope = item
                    event = item.event
                    waiting = waiting or item.done is not None
                else:  # a bare event: nobody waits for it
                    envelope, event = None, item  # type: ignore[assignment]
                # a result given without its payload (an API call, a forwarded one) is
                # decided as a bare one; one with its payload as an event
                result = event.result if event.__class__ is ResultReceived and \
                    event.output is None else None  # type: ignore[union-attr]
            if output is None and result is not None and result.status is _JOB_SUCCEEDED \
                    and result.result_ptr and path is not None:
                # SPEC §8: the core needs a success's payload (read here unless read early)
                output = load_output_now(path, result.result_ptr, wiring.output)
                if output is None:
                    output = await load_output(path, result.result_ptr)
            now = wiring.now()
            if envelope is not None and envelope.fired_at is not None and \
                    envelope.fired_at > now:
                now = envelope.fired_at  # a timer never fires "early" by float rounding
            try:
                if changes is not None:  # not the batch's first: a working area of its own
                    outcome = decide(plan, state, event, now) if result is None else \
                        decide_result(plan, state, result, output, now)
                else:  # the task's working area (renewed after the last batch)
                    tx.now = now
                    outcome = decide_in(tx, event) if result is None else \
                        decide_result_in(tx, result, output)
            except Exception as exc:
                if changes is None:  # the working area afresh for the next event
                    tx.renew(_NO_TIME)
                if not isinstance(exc, CordtrioError):
                    # a core bug must not kill the engine or other runs
                    log.exception("run %s: core failed on %r", run_id, item)
                if envelope is not None:
                    envelope.error = exc
                continue
            if changes is None:  # the first decided: the core's own, fresh for every decide
                effects, rows, changes = outcome.effects, outcome.rows, outcome.changes
            else:
                effects += outcome.effects
                rows += outcome.rows
                changes.merge(outcome.changes)
        run = state.run
        try:
            if changes is not None:
                await self._carry_out(effects, rows, changes, now, effects)
        except BaseException as exc:
            # The task is going down (a definite store error such as the run having been
            # deleted, a shell bug, or the engine closing): answer this batch's callers too,
            # or they would wait forever (``fail_leftovers`` only sees unread envelopes).
            failure = exc if isinstance(exc, Exception) else CordtrioError(
                f"run {run_id}: engine stopped")
            for item in batch:
                if isinstance(item, Envelope):
                    item.error = item.error or failure
                    if item.done is not None:
                        item.done.set()
            raise
        if waiting:
            for item in batch:
                if isinstance(item, Envelope) and item.done is not None:
                    item.done.set()
        if run.status.is_terminal:
            self._finish = self.host.run_finished(run_id) or self._finish


# module globals: several times cheaper than the enum lookup
_WAITING = RunStatus.WAITING
_NO_TIME = datetime.min  # a working area's time until it is renewed for an event
_JOB_SUCCEEDED = JobStatus.SUCCEEDED
_RESULTS = frozenset((JobResult, ResultRead))  # a job result from the bus (read early or not)


_NOTHING: list[Item] = []  # no batch in flight (never changed: ``in_flight`` sees no item)


__all__ = ["Envelope", "Finish", "Preload", "Redirect", "RunTask", "RunWiring", "load_output"]
