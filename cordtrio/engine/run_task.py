"""One Trio task per active run: the only writer of that run's state.

The task receives envelopes (commands and job results) through an unbounded memory
channel, folds them into the run with the pure core (``decide``), and executes the
effects in a fixed order per batch:

1. load result payloads the core needs (before deciding);
2. *pre-commit* effects whose outcome the core must know before anything is persisted:
   storing job payloads and publishing notify alerts (their failures are fed back);
3. persist the changed parts of the run and the timeline (retried until it works);
4. publish job requests (a failure is fed back and persisted in a further round) and job
   cancels; call hooks; arm timers;
5. acknowledge the envelopes (read-your-writes for the public API).

Timers live in the task (``timers.Timers``: a heap of deadlines on Trio's clock), so
cancelling the task's scope — the run's lifetime — kills them all at once. The effects' I/O
is in ``effects``; envelopes and the API's hand-over objects in ``envelopes``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from ..core.events import (
    AlertOutcome,
    ArmTimer,
    CancelJob,
    Dispatch,
    DispatchFailed,
    Effect,
    Event,
    PublishAlert,
    RecordTimeline,
    Recover,
    ResultReceived,
    StepFinished,
)
from ..core.machine import decide
from ..core.plan import Plan
from ..core.state import RunState
from ..errors import CordtrioError, CorruptDataError, LeaseLostError
from ..model import RunStatus, StepStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges
from ..protocol import JobStatus
from ..ratelog import rate_limited
from ..retry import retrying
from .effects import load_output, publish_alert, publish_cancel, publish_job, store_payload
from .envelopes import Envelope, Finish, Preload, Redirect
from .forwarding import forward_as_guest, forward_results
from .leases import CLEANUP_TIMEOUT
from .timers import Timers
from .unreadable import fail_unreadable, load_run

if TYPE_CHECKING:
    from .leases import LeaseKeeper
    from .supervisor import Engine

log = logging.getLogger("cordtrio.engine")


class RunTask:
    """Owns one run while it is active in this engine."""

    def __init__(self, engine: Engine, run_id: str, preload: Preload | None = None) -> None:
        self.engine = engine
        self.run_id = run_id
        self._preload = preload
        self._finish: Finish | None = None  # wait_run callers woken by this task's finish
        self.send, self._receive = trio.open_memory_channel[Envelope](math.inf)
        self.scope = trio.CancelScope()
        self._timers = Timers()
        self.plan: Plan | None = None
        self.state: RunState | None = None
        self._lost = False  # multi-engine: the lease is gone, stop acting at once
        self._unloadable: CordtrioError | None = None  # the run or workflow cannot load
        self._in_flight: list[Envelope] = []
        self._unacked = 0  # multi-engine: commands taken from the inbox, not acknowledged
        self._crashed = False

    # ----------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Load the run, then apply envelopes until the run is terminal and idle. In
        multi-engine mode, first take the run's lease (or forward everything to its owner),
        and let go of the run at the end (see ``engine.leases``)."""
        keeper = self.engine.leases
        try:
            with self.scope:
                if keeper is not None:
                    await keeper.wait_previous(self.run_id)
                if not await self._load():
                    return
                await self._loop()
            state = self.state
            if self._finish is not None and state is not None and not self._lost and \
                    state.run.status.is_terminal:  # let go of a finished run: hand it over
                self._finish.run = state.run
        except LeaseLostError as exc:
            self._lost = True
            rate_limited(log).warning("lease lost", "run %s: %s; another engine drives it "
                                      "now", self.run_id, exc)
        except Exception as exc:  # a shell bug must not take the engine (other runs) down
            if not isinstance(exc, CorruptDataError) or not await fail_unreadable(
                    self.engine, self.run_id, exc):
                log.exception("run %s: task crashed; the run stays in the store", self.run_id)
            self._crashed = True
            if keeper is None:
                self._fail_leftovers(exc)
        finally:
            self.engine._run_exited(self)
            if keeper is None:
                self._fail_leftovers()
            else:
                await self._let_go(keeper)

    def unfinished(self) -> bool:
        """Loaded here and not terminal: ``wait_run`` may wait without reading the store."""
        return self.state is not None and not self.state.run.status.is_terminal

    def lease_lost(self) -> None:
        """The keeper found the lease gone: stop acting on the run now."""
        self._lost = True
        self.scope.cancel()

    async def _let_go(self, keeper: LeaseKeeper) -> None:
        """Multi-engine end of the task: hand what was not applied to the run's owner and
        release the lease. Runs with no checkpoint before the leftovers are taken, so no
        envelope slips between this task and the next one for the run."""
        closing = keeper.closing_started(self)
        try:
            owned = keeper.holds(self)
            leftovers = self._take_leftovers()
            unapplied = self._in_flight  # a batch interrupted (lease lost, engine closing)
            for envelope in unapplied:
                if envelope.done is not None and (self._lost or isinstance(
                        envelope.error, LeaseLostError)):
                    envelope.error = Redirect()  # the caller retries: forwarded then
            if owned or keeper.crashed:
                for envelope in leftovers:  # API callers retry (on a new task, or fail)
                    if envelope.done is not None:
                        envelope.error = envelope.error or Redirect()
                        envelope.done.set()
            if keeper.crashed:
                return
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                if owned:
                    await self._drop_poison(keeper)
                    await keeper.release(self)
                    await forward_results(keeper, self.run_id, [*unapplied, *leftovers])
                else:  # never held, or the keeper found the lease gone
                    await forward_results(keeper, self.run_id, unapplied)
                    await forward_as_guest(keeper, self.run_id, leftovers)
        finally:
            for envelope in self._in_flight:
                if envelope.done is not None:
                    envelope.done.set()
            keeper.closing_done(self, closing)

    async def _drop_poison(self, keeper: LeaseKeeper) -> None:
        """Acknowledge commands nobody can apply, so the run is not re-activated for them
        forever: all of a run that cannot be loaded, or the batch that crashed this task
        (a definite error or a bug; transient store errors are retried inside the batch).
        Anything else taken stays unacknowledged for the next owner."""
        if self._unloadable is not None:
            await keeper.drop_commands(self.run_id, None, str(self._unloadable))
        elif self._crashed and self._unacked:
            await keeper.drop_commands(self.run_id, self._unacked, "its task crashed")

    def _take_leftovers(self) -> list[Envelope]:
        out: list[Envelope] = []
        while True:
            try:
                out.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
        self._receive.close()
        return out

    async def _load(self) -> bool:
        engine = self.engine
        keeper = engine.leases
        if keeper is not None and not await keeper.acquire(self):
            return False  # another engine owns the run: ``_let_go`` forwards to it
        preload, self._preload = self._preload, None
        try:
            if preload is not None and preload.run is not None and keeper is None:
                run = preload.run
            else:
                run = await load_run(engine, self.run_id)
            plan = await engine._plan_for(
                run.workflow_id, preload.workflow if preload is not None else None)
        except CordtrioError as exc:
            self._fail_leftovers(exc)
            self._unloadable = exc  # no await here: the task is still the run's route
            return False
        self.plan = plan
        self.state = RunState(run)
        return True

    async def _loop(self) -> None:
        assert self.state is not None
        keeper = self.engine.leases
        first = True
        while True:
            batch = self._take_ready()
            if first:
                # Re-arm the timers a stored run implies before anything else touches it
                # (a no-op for a run that has not started); a new owner then applies the
                # commands queued for the run while nobody held it, and first those an
                # earlier owner took and never acknowledged (at-least-once: it may have
                # died or lost the lease before persisting them). The take covers any
                # drain request already here.
                first = False
                inbox = await self._take_inbox(keeper) if keeper is not None else []
                batch = [Envelope(Recover()), *inbox, *(e for e in batch if not e.drain)]
            if not batch:
                if self.state.run.status.is_terminal:
                    return  # idle and finished: the task ends, state stays in the store
                if keeper is None and self._parked():
                    # idle until approved: the next envelope reloads it (W4 memory). Not in
                    # multi-engine mode: letting go would free the lease, and every engine's
                    # takeover scan would then reload the run every ttl/2.
                    return
                batch = await self._wait_for_work()
            if keeper is not None and any(e.drain for e in batch):
                batch = [e for e in batch if not e.drain]
                batch += await self._take_inbox(keeper)
                if not batch:  # nothing, or only undecodable commands (dropped, logged)
                    await keeper.ack(self.run_id, self._unacked)
                    self._unacked = 0
                    continue
            self._in_flight = batch
            await self._process(batch)
            self._in_flight = []
            if self._unacked:  # persisted: the store may forget the commands now
                assert keeper is not None
                await keeper.ack(self.run_id, self._unacked)
                self._unacked = 0

    async def _take_inbox(self, keeper: LeaseKeeper) -> list[Envelope]:
        """The run's unacknowledged commands, marked ``queued``; counts them for the ack
        (a take returns every unacknowledged command, so the count is the latest take's)."""
        envelopes, self._unacked = await keeper.take_inbox(self.run_id)
        for envelope in envelopes:
            envelope.queued = True
        return envelopes

    async def _save_changes(self, run: WorkflowRun, changes: RunChanges,
                            events: list[TimelineEvent]) -> None:
        """The run's state write: fenced by the lease in multi-engine mode."""
        keeper = self.engine.leases
        if keeper is not None:
            changes.lease_owner = keeper.owner
        await self.engine.store.save_run_changes(run, changes, events)

    async def _append_timeline(self, events: list[TimelineEvent]) -> None:
        keeper = self.engine.leases
        if keeper is not None and self.state is not None:
            fenced = RunChanges(lease_owner=keeper.owner)
            await self.engine.store.save_run_changes(self.state.run, fenced, events)
        else:
            await self.engine.store.append_timeline_events(self.run_id, events)

    def _parked(self) -> bool:
        """Waiting on an approval with no timer armed and no job or alert in flight: nothing
        but a command can move the run, so its task (channels, scopes, the loaded run) need
        not stay in memory. Whatever comes next activates a new task that reloads the run
        (``Engine._deliver``); a run with timers keeps its task, which owns them."""
        assert self.state is not None
        run = self.state.run
        if run.status != RunStatus.WAITING or self._timers:
            return False
        return all(sr.status != StepStatus.RUNNING for sr in run.steps.values())

    def _take_ready(self) -> list[Envelope]:
        batch: list[Envelope] = []
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        if self._timers:
            batch.extend(self._timers.due())
        return batch

    async def _wait_for_work(self) -> list[Envelope]:
        if not self._timers:  # no cancel scope to enter and leave: the common case
            envelope = await self._receive.receive()
            return [envelope, *self._take_ready()]
        with trio.move_on_at(self._timers.next_deadline):
            envelope = await self._receive.receive()
            return [envelope, *self._take_ready()]
        return self._take_ready()

    def _fail_leftovers(self, error: BaseException | None = None) -> None:
        """Answer envelopes that will never be applied here (the run is gone or ended)."""
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            envelope.error = envelope.error or error or Redirect()
            if envelope.done is not None:
                envelope.done.set()
        self._receive.close()

    # -------------------------------------------------------------------- one batch

    async def _process(self, batch: list[Envelope]) -> None:
        assert self.plan is not None and self.state is not None
        engine = self.engine
        effects: list[Effect] = []
        changes = RunChanges()
        for envelope in batch:
            event = await self._with_output(envelope.event)
            now = engine.clock.now()
            if envelope.fired_at is not None and envelope.fired_at > now:
                now = envelope.fired_at  # a timer never fires "early" by float rounding
            try:
                outcome = decide(self.plan, self.state, event, now)
            except CordtrioError as exc:
                envelope.error = exc
                continue
            except Exception as exc:  # a core bug must not kill the engine or other runs
                log.exception("run %s: core failed on %r", self.run_id, event)
                envelope.error = exc
                continue
            effects.extend(outcome.effects)
            changes.merge(outcome.changes)
        try:
            await self._execute(effects, changes)
        except BaseException as exc:
            # The task is going down (a definite store error such as the run having been
            # deleted, a shell bug, or the engine closing): answer this batch's callers too,
            # or they would wait forever (``_fail_leftovers`` only sees unread envelopes).
            error = exc if isinstance(exc, Exception) else CordtrioError(
                f"run {self.run_id}: engine stopped")
            for envelope in batch:
                envelope.error = envelope.error or error
                if envelope.done is not None:
                    envelope.done.set()
            raise
        for envelope in batch:
            if envelope.done is not None:
                envelope.done.set()
        if self.state.run.status.is_terminal:
            self._finish = engine._run_finished(self.run_id) or self._finish

    async def _with_output(self, event: Event) -> Event:
        """Attach the result payload to a successful result (SPEC §8 needs it)."""
        if not isinstance(event, ResultReceived) or event.output is not None:
            return event
        result = event.result
        payloads = self.engine.payloads
        if result.status != JobStatus.SUCCEEDED or not result.result_ptr or payloads is None:
            return event
        return ResultReceived(result, await load_output(payloads, result.result_ptr))

    async def _execute(self, effects: list[Effect], changes: RunChanges) -> None:
        """Carry out effects in the order described in the module docstring. Feedback
        (a failed payload store or publish, an alert's outcome) goes back through the core
        and its effects are carried out too, until nothing is left."""
        assert self.state is not None
        run = self.state.run
        pending = effects
        while pending or changes:
            round_effects: list[Effect] = []
            failed: set[str] = set()
            queue = pending
            while queue:  # pre-commit stage
                round_effects.extend(queue)
                feedback: list[Event] = []
                for effect in queue:
                    if isinstance(effect, Dispatch):
                        problem = await store_payload(self.engine.payloads, effect)
                        if problem:
                            failed.add(effect.job_id)
                            feedback.append(
                                DispatchFailed(effect.target_id, effect.job_id, problem))
                    elif isinstance(effect, PublishAlert):
                        error = await publish_alert(self.engine, self.run_id, effect)
                        feedback.append(AlertOutcome(effect.step_id, error))
                queue = self._decide_more(feedback, changes) if feedback else []
            await self._persist(changes, round_effects)
            changes = RunChanges()
            feedback = []
            for effect in round_effects:  # post-commit stage
                if isinstance(effect, Dispatch):
                    if effect.job_id in failed:
                        continue
                    problem = await publish_job(self.engine, self.run_id, run, effect)
                    if problem:
                        feedback.append(DispatchFailed(effect.target_id, effect.job_id, problem))
                    elif not effect.again:
                        self.engine._hook_dispatched(self.run_id, effect.target_id,
                                                     effect.job_id)
                elif isinstance(effect, CancelJob):
                    await publish_cancel(self.engine, self.run_id, effect)
                elif isinstance(effect, StepFinished):
                    self.engine._hook_finished(self.run_id, effect.step_id, effect.status)
                elif isinstance(effect, ArmTimer):
                    self._timers.arm(effect, self.engine.clock.now())
            pending = self._decide_more(feedback, changes) if feedback else []

    def _decide_more(self, events: Iterable[Event], changes: RunChanges) -> list[Effect]:
        """Feed shell feedback to the core; merge its changes, return its effects."""
        assert self.plan is not None and self.state is not None
        effects: list[Effect] = []
        for event in events:
            outcome = decide(self.plan, self.state, event, self.engine.clock.now())
            effects.extend(outcome.effects)
            changes.merge(outcome.changes)
        return effects

    async def _persist(self, changes: RunChanges, effects: list[Effect]) -> None:
        assert self.state is not None
        run = self.state.run
        events: list[TimelineEvent] = [e.event for e in effects if isinstance(e, RecordTimeline)]
        if changes:  # state and timeline in one atomic write: a crash keeps both or neither
            await retrying(lambda: self._save_changes(run, changes, events),
                           f"save run {self.run_id}")
        elif events:
            await retrying(lambda: self._append_timeline(events),
                           f"append timeline of run {self.run_id}")


__all__ = ["Envelope", "Finish", "Preload", "Redirect", "RunTask", "load_output"]
