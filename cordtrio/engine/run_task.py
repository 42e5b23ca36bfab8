"""One Trio task per active run: the only writer of that run's state.

The task receives envelopes (commands and job results) in its ``Mailbox`` (unbounded; a
waiting task is woken by the put), folds them into the run with the pure core
(``decide``), and executes the effects in a fixed order per batch:

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
from collections.abc import Iterable
from datetime import datetime

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
    Recover,
    ResultReceived,
    StepFinished,
)
from ..core.machine import decide
from ..core.plan import Plan
from ..core.state import RunState
from ..errors import CordtrioError, CorruptDataError, LeaseLostError
from ..json_payloads import StorePath, path_for
from ..model import RunStatus, StepStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges, own_call
from ..protocol import SUBJECT_SUBMIT, JobStatus
from ..ratelog import rate_limited
from ..retry import retry_after
from .effects import (
    load_output,
    load_output_now,
    packet,
    publish_alert,
    publish_cancel,
    publish_job,
    store_payload,
    store_payload_now,
)
from .envelopes import Envelope, Finish, Mailbox, Preload, Redirect
from .host import RunHost
from .timers import Timers

log = logging.getLogger("cordtrio.engine")


class RunTask:
    """Owns one run while it is active in this engine (``host.OwnedRun`` for the
    engine's ownership strategy)."""

    def __init__(self, host: RunHost, run_id: str, preload: Preload | None = None) -> None:
        self.host = host
        self.owner = host.ownership
        # the store writes job inputs with the run (``RunChanges.payloads``): an optional
        # host attribute, set by the engine when its store commits its payload store
        self._stage_payloads: bool = getattr(host, "payloads_in_changes", False)
        # ``Ownership.queues_commands``: drain requests come, applied batches are
        # acknowledged; not for an engine alone on its store (nothing to do for either)
        self._queues_commands: bool = getattr(self.owner, "queues_commands", True)
        # ``SingleEngine.save_changes_now``: a store write not awaited (in-process store)
        self._save_now = getattr(self.owner, "save_changes_now", None)
        self._publish_now = own_call(host.bus, "publishes_now", "publish_now")  # PublishNow
        # the payload store's calls, picked once (``json_payloads.path_for``): an optional
        # host attribute, set by the engine for all its run tasks
        payloads = host.payloads
        self._path: StorePath | None = getattr(host, "payload_path", None) or (
            path_for(payloads) if payloads is not None else None)
        self.run_id = run_id
        self._preload = preload
        self._created = False  # started from the run ``submit`` created, not the store
        self._finish: Finish | None = None  # wait_run callers woken by this task's finish
        self.ended: WorkflowRun | None = None  # the final run, when nobody waited for it
        self.mailbox = Mailbox()
        self.scope = trio.CancelScope()  # the run's cancellation (a lost lease)
        self._timers = Timers()
        self._armed = self._timers.heap  # truthy while a timer is armed
        self._alarm_at = -1.0  # the deadline the engine's alarm will poke the mailbox at
        self.plan: Plan | None = None
        self.state: RunState | None = None
        self.lost = False  # the lease is gone (multi-engine): stop acting at once
        self.unloadable: CordtrioError | None = None  # the run or workflow cannot load
        self.in_flight: list[Envelope] = []
        self.crashed = False
        self.error: BaseException | None = None  # what crashed the task

    # ----------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Take the run (``Ownership.acquire``: in multi-engine mode, its lease), load it,
        then apply envelopes until the run is terminal and idle; let go of the run at the
        end (``Ownership.let_go``)."""
        try:
            with self.scope:
                if not await self._load():
                    return
                await self._loop()
            state = self.state
            if state is not None and not self.lost and state.run.status.is_terminal:
                # let go of a finished run: hand it to its waiters, or (nobody waited) to
                # the engine, for the next ``wait_run`` (``Engine.run_exited``)
                if self._finish is not None:
                    self._finish.run = state.run
                else:
                    self.ended = state.run
        except LeaseLostError as exc:
            self.lost = True
            rate_limited(log).warning("lease lost", "run %s: %s; another engine drives it "
                                      "now", self.run_id, exc)
        except Exception as exc:  # a shell bug must not take the engine (other runs) down
            if not isinstance(exc, CorruptDataError) or not await self.host.mark_unreadable(
                    self.run_id, exc):
                log.exception("run %s: task crashed; the run stays in the store", self.run_id)
            self.crashed = True
            self.error = exc
        finally:
            self.host.run_exited(self)
            await self.owner.let_go(self)

    def unfinished(self) -> bool:
        """Loaded here and not terminal: ``wait_run`` may wait without reading the store."""
        return self.state is not None and not self.state.run.status.is_terminal

    def lease_lost(self) -> None:
        """The keeper found the lease gone: stop acting on the run now."""
        self.lost = True
        self.scope.cancel()

    def take_leftovers(self) -> list[Envelope]:
        return self.mailbox.close()

    def fail_leftovers(self, error: BaseException | None = None) -> None:
        """Answer envelopes that will never be applied here (the run is gone or ended)."""
        for envelope in self.take_leftovers():
            envelope.error = envelope.error or error or Redirect()
            if envelope.done is not None:
                envelope.done.set()

    async def _load(self) -> bool:
        if not await self.owner.acquire(self):
            return False  # another engine owns the run: ``let_go`` forwards to it
        preload, self._preload = self._preload, None
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
        assert self.state is not None
        owner = self.owner
        # Re-arm the timers a stored run implies before anything else touches it (a no-op
        # for a run that has not started); then apply the commands queued for the run in
        # the store (multi-engine: while nobody held it, and first those an earlier owner
        # took and never acknowledged — at-least-once: it may have died or lost the lease
        # before persisting them). The take covers any drain request already here (not
        # one arriving during it: that one is applied next).
        ready = self._take_ready()
        queues_commands = self._queues_commands  # else no drain requests, nothing to acknowledge
        if self._created and not (queues_commands and _has_drain(ready)):
            batch = ready  # a run submit just created: nothing queued for it (fresh_run)
        else:
            inbox = await owner.take_commands(self.run_id)
            batch = [*inbox, *(e for e in ready if not e.drain)]
        if not self._created:  # a run ``submit`` just created has nothing to re-arm yet
            batch.insert(0, Envelope(Recover()))
        mailbox = self.mailbox
        pending = mailbox.items  # a truth test, not a call: is anything waiting?
        timers = self._timers
        while True:
            if not batch:
                if self.state.run.status.is_terminal:
                    return  # idle and finished: the task ends, state stays in the store
                if self.state.run.status is _WAITING and self._parked() and \
                        owner.may_unload_idle():  # (``_parked``'s first test, inline)
                    # idle until approved: the next envelope reloads it (W4 memory)
                    return
                if self._armed:
                    self._set_alarm()
                await mailbox.wait()
                batch = mailbox.take_all()  # ``_take_ready`` inlined, as below
                if self._armed:
                    batch.extend(timers.due())
                if not batch:  # a stale poke of the alarm
                    continue
            if queues_commands and _has_drain(batch):
                batch = [e for e in batch if not e.drain]
                batch += await owner.take_commands(self.run_id)
                if not batch:  # nothing, or only undecodable commands (dropped, logged)
                    await owner.acknowledge(self.run_id)
                    continue
            self.in_flight = batch
            await self._process(batch)
            self.in_flight = []
            if queues_commands:
                await owner.acknowledge(self.run_id)  # persisted: the store may forget them
            # ``_take_ready`` inlined: once or twice per step, and usually nothing is there
            batch = mailbox.take_all() if pending else []
            if self._armed:
                batch.extend(timers.due())

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

    def _take_ready(self) -> list[Envelope]:
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

    async def _process(self, batch: list[Envelope]) -> None:
        assert self.plan is not None and self.state is not None
        plan, state, clock = self.plan, self.state, self.host.clock
        effects: list[Effect] | None = None
        changes: RunChanges | None = None
        now = None
        for envelope in batch:
            event = envelope.event
            if event.__class__ is ResultReceived and event.output is None:
                result = event.result  # SPEC §8: the core needs a success's result payload
                path = self._path
                if result.status is _JOB_SUCCEEDED and result.result_ptr and \
                        path is not None:  # (the engine's own event: set in place)
                    loaded = load_output_now(path, result.result_ptr)
                    event.output = loaded if loaded is not None else \
                        await load_output(path, result.result_ptr)
            now = clock.now()
            if envelope.fired_at is not None and envelope.fired_at > now:
                now = envelope.fired_at  # a timer never fires "early" by float rounding
            try:
                outcome = decide(plan, state, event, now)
            except CordtrioError as exc:
                envelope.error = exc
                continue
            except Exception as exc:  # a core bug must not kill the engine or other runs
                log.exception("run %s: core failed on %r", self.run_id, event)
                envelope.error = exc
                continue
            if effects is None or changes is None:  # the first decided: the core's own,
                effects, changes = outcome.effects, outcome.changes  # fresh for every decide
            else:
                effects += outcome.effects
                changes.merge(outcome.changes)
        try:
            await self._execute(effects if effects is not None else [],
                                changes if changes is not None else RunChanges(),
                                now if now is not None else clock.now())
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
        if state.run.status.is_terminal:
            self._finish = self.host.run_finished(self.run_id) or self._finish

    async def _execute(self, effects: list[Effect], changes: RunChanges, now: datetime
                       ) -> None:
        """Carry out effects in the order described in the module docstring. Feedback
        (a failed payload store or publish, an alert's outcome) goes back through the core
        and its effects are carried out too, until nothing is left. ``now``: when the core
        decided, the time of the bus messages sent."""
        assert self.state is not None
        pending = effects
        if not pending and not changes:
            return
        while True:
            after: list[Effect] = []  # the effects but the timeline's, for ``_after_commit``
            timeline: list[TimelineEvent] = []
            failed: list[str] = []  # job ids whose payload could not be stored (rare: a list)
            staged = changes.payloads if self._stage_payloads else None
            queue = pending
            while queue:
                feedback = await self._before_commit(queue, timeline, after, failed, staged,
                                                     now)
                queue = self._decide_more(feedback, changes) if feedback else []
            # state and timeline in one atomic write: a crash keeps both or neither
            # (``_persist``'s first try inlined: one coroutine fewer per batch)
            if changes.header or changes:  # (a step writes its header: no ``__bool__`` call)
                try:
                    save_now = self._save_now
                    if save_now is not None:
                        save_now(self.state.run, changes, timeline)
                    else:
                        await self.owner.save_changes(self.state.run, changes, timeline)
                except Exception as exc:
                    await self._persist(changes, timeline, exc)
            elif timeline:
                await self._persist(changes, timeline)
            feedback = await self._after_commit(after, failed, now)
            if not feedback:
                return
            changes = RunChanges()
            pending = self._decide_more(feedback, changes)
            if not pending and not changes:
                return

    async def _before_commit(self, effects: list[Effect], timeline: list[TimelineEvent],
                             after: list[Effect], failed: list[str],
                             staged: dict[str, bytes] | None, now: datetime) -> list[Event]:
        """Gather the timeline rows, and the other effects in ``after`` (for
        ``_after_commit``: half of a step's effects are timeline rows, walked once); store
        job payloads (or, with ``staged``, hand them to the run write) and publish notify
        alerts, whose outcome the core must know before anything is persisted (returned as
        feedback)."""
        host = self.host
        feedback: list[Event] = []
        # by exact type: the core builds every effect of its own class, and ``type(x) is C``
        # is an inline check where ``isinstance`` is a call (~7 of them a W1 step here)
        for effect in effects:
            if type(effect) is TimelineEvent:
                timeline.append(effect)
                continue
            after.append(effect)
            if type(effect) is Dispatch:
                problem = store_payload_now(self._path, effect) if staged is None else None
                if problem is None:
                    problem = await store_payload(self._path, effect, staged)
                if problem:
                    failed.append(effect.job_id)
                    feedback.append(DispatchFailed(effect.target_id, effect.job_id, problem))
            elif type(effect) is PublishAlert:
                error = await publish_alert(host.bus, now, self.run_id, effect)
                feedback.append(AlertOutcome(effect.step_id, error))
        return feedback

    async def _after_commit(self, effects: list[Effect], failed: list[str], now: datetime
                            ) -> list[Event]:
        """Publish job requests (a failure is returned as feedback) and cancels, call the
        hooks, arm timers: in the order the core gave them (``effects``: without the
        timeline rows, persisted already)."""
        assert self.state is not None
        host = self.host
        run_id = self.run_id
        config = host.config
        bus = host.bus
        publish_now = self._publish_now
        feedback: list[Event] = []
        for effect in effects:  # by exact type, as in ``_before_commit``
            if type(effect) is Dispatch:
                if effect.job_id in failed:
                    continue
                if config is None:  # ``publish_job`` without a config provider, inline
                    try:
                        request = packet(now, run_id, effect.request)
                        if publish_now is None or not publish_now(SUBJECT_SUBMIT, request):
                            await bus.publish(SUBJECT_SUBMIT, request)
                        problem = ""
                    except Exception as exc:
                        problem = f"publish {effect.job_id}: {exc}"
                else:
                    problem = await publish_job(host.bus, now, config, run_id, self.state.run,
                                                effect)
                if problem:
                    feedback.append(DispatchFailed(effect.target_id, effect.job_id, problem))
                elif not effect.again:
                    host.step_dispatched(run_id, effect.target_id, effect.job_id)
            elif type(effect) is StepFinished:
                host.step_finished(run_id, effect.step_id, effect.status)
            elif type(effect) is CancelJob:
                await publish_cancel(host.bus, now, run_id, effect)
            elif type(effect) is ArmTimer:
                self._timers.arm(effect, host.clock.now())
        return feedback

    def _decide_more(self, events: Iterable[Event], changes: RunChanges) -> list[Effect]:
        """Feed shell feedback to the core; merge its changes, return its effects."""
        assert self.plan is not None and self.state is not None
        effects: list[Effect] = []
        for event in events:
            outcome = decide(self.plan, self.state, event, self.host.clock.now())
            effects.extend(outcome.effects)
            changes.merge(outcome.changes)
        return effects

    async def _persist(self, changes: RunChanges, events: list[TimelineEvent],
                       failure: Exception | None = None) -> None:
        """Write ``changes`` and ``events`` (just the events when nothing else changed),
        retried until it works (only a definite error ends it); ``failure``: the first try
        of the write already failed with it."""
        assert self.state is not None
        run = self.state.run
        owner = self.owner
        if changes:
            if failure is None:
                try:
                    await owner.save_changes(run, changes, events)
                    return
                except Exception as exc:
                    failure = exc
            await retry_after(failure, lambda: owner.save_changes(run, changes, events),
                              f"save run {self.run_id}")
        elif events:
            try:
                await owner.append_timeline(run, events)
            except Exception as exc:
                await retry_after(exc, lambda: owner.append_timeline(run, events),
                                  f"append timeline of run {self.run_id}")


# module globals: several times cheaper than the enum lookup
_WAITING = RunStatus.WAITING
_JOB_SUCCEEDED = JobStatus.SUCCEEDED


def _has_drain(batch: list[Envelope]) -> bool:
    """A request to apply the run's queued commands is among ``batch`` (multi-engine)."""
    for envelope in batch:  # noqa: SIM110 (any() and a generator cost more, every batch)
        if envelope.drain:
            return True
    return False


__all__ = ["Envelope", "Finish", "Preload", "Redirect", "RunTask", "load_output"]
