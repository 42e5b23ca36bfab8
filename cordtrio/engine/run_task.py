"""One Trio task per active run: the only writer of that run's state.

The task receives envelopes (commands) and bare job results in its ``Mailbox`` (unbounded;
a waiting task is woken by the put), folds them into the run with the pure core
(``decide``; a bare job result with ``decide_result``: no event built for it), and
executes the effects in a fixed order per batch (``_process``; ``_carry_out``: one pass
over them before the write, one over the rest after it; a batch of one job result, the
commonest, on a short path, ``_apply_result``, tested against the general one):

1. load result payloads the core needs (before deciding);
2. *pre-commit* effects whose outcome the core must know before anything is persisted:
   storing job payloads and publishing notify alerts (their failures are fed back);
3. persist the changed parts of the run and the timeline (retried until it works);
4. publish job requests (a failure is fed back and persisted in a further round) and job
   cancels; call hooks; arm timers;
5. acknowledge the envelopes (read-your-writes for the public API).

Timers live in the task (``timers.Timers``: a heap of deadlines on Trio's clock), so
they end with the task — the run's lifetime — all at once. The task runs in its own
cancel scope, the run's cancellation in the shell: cancelling it (a lost lease, in
multi-engine mode) stops the run's task at once.
The effects' I/O is in ``effects``; envelopes and the API's hand-over objects in
``envelopes``; what every task of an engine shares in ``host.RunWiring``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

import trio

from ..core.events import (
    AlertOutcome,
    ArmTimer,
    CancelJob,
    Dispatch,
    DispatchFailed,
    Effect,
    Event,
    LoadedOutput,
    PublishAlert,
    Recover,
    ResultReceived,
    StepFinished,
)
from ..core.machine import decide, decide_in, decide_result, decide_result_in
from ..core.plan import SENDER_ID, Plan
from ..core.state import RunState, Tx
from ..errors import CordtrioError, CorruptDataError, LeaseLostError
from ..model import RunStatus, StepStatus, TimelineEvent, WorkflowRun
from ..ports import RunChanges
from ..protocol import PROTOCOL_VERSION, SUBJECT_SUBMIT, BusPacket, JobResult, JobStatus
from ..ratelog import rate_limited
from ..retry import retry_after
from .effects import (
    load_output,
    load_output_now,
    publish_alert,
    publish_cancel,
    publish_job,
    store_payload,
    store_payload_now,
)
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


class RunTask:
    """Owns one run while it is active in this engine (``host.OwnedRun`` for the
    engine's ownership strategy)."""

    # what most tasks never change, as class defaults: not set again for every run
    _created = False  # started from the run ``submit`` created, not the store
    _finish: Finish | None = None  # wait_run callers woken by this task's finish
    ended: WorkflowRun | None = None  # the final run, when nobody waited for it
    _alarm_at = -1.0  # the deadline the engine's alarm will poke the mailbox at
    plan: Plan | None = None
    state: RunState | None = None
    lost = False  # the lease is gone (multi-engine): stop acting at once
    unloadable: CordtrioError | None = None  # the run or workflow cannot load
    crashed = False
    error: BaseException | None = None  # what crashed the task

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
            with self.scope:
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

    @property
    def in_flight(self) -> list[Envelope]:
        """The batch being applied when the task stopped (empty between batches), its bare
        events and job results in envelopes (once: ``let_go`` may answer them)."""
        batch = self._batch
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
        if self._created and not (queues_commands and has_drain(ready)):
            batch = ready  # a run submit just created: nothing queued for it (fresh_run)
        else:
            inbox: list[Item] = [*await owner.take_commands(self.run_id)]
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
            if queues_commands and has_drain(batch):
                batch = without_drains(batch)
                batch += await owner.take_commands(self.run_id)
                if not batch:  # nothing, or only undecodable commands (dropped, logged)
                    await owner.acknowledge(self.run_id)
            if batch:
                try:
                    # most batches: one job result from the bus, alone (``_apply_result``)
                    item = batch[0]
                    if (item.__class__ is JobResult or item.__class__ is ResultRead) and \
                            len(batch) == 1:
                        await self._apply_result(item, tx)  # type: ignore[arg-type]
                    else:
                        await self._process(batch, plan, state, tx)
                except BaseException:
                    self._batch = batch  # ``in_flight``, for ``Ownership.let_go``
                    raise
                if queues_commands:
                    await owner.acknowledge(self.run_id)  # persisted: the store may forget
            # The next batch: what came in meanwhile (usually nothing: once or twice per
            # step) and the timers due; else the task is idle and waits. The mailbox's one
            # reader takes its items by handing it a new list (``Mailbox.items``): no call.
            # The working area is renewed for the next batch, now that the last is done
            # with it (the next only sets its time): nothing of the last batch is kept
            # alive by it while the run waits (its effects and rows, the jobs' inputs).
            if mailbox.items:
                batch, mailbox.items = mailbox.items, []
                tx.renew(_NO_TIME)
            elif armed and (batch := timers.due()):
                tx.renew(_NO_TIME)
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
                # await between: none is using it now)
                tx.renew(_NO_TIME)
                self._wiring.output.value = None
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

    async def _carry_out(self, effects: list[Effect], rows: list[TimelineEvent],
                         changes: RunChanges, now: datetime, pending: list[Effect]) -> None:
        """Carry out a batch's ``effects`` (decided at ``now``) and write ``changes`` and
        ``rows``, in the order of the module docstring: the pass before the write over
        ``pending`` (those of ``effects`` whose part before the write is still to do: all
        of them, unless ``_apply_result`` did it for some), the write, the pass after it
        (``_after_write``); feedback goes back through the core, and its effects are
        carried out too, until nothing is left."""
        wiring = self._wiring
        path, run_id = wiring.path, self.run_id
        run = self.state.run  # type: ignore[union-attr]
        effect: Any  # told apart by exact type below (``x.__class__ is C``: not narrowed)
        while True:
            # before the write: the jobs' payloads stored (or, ``staged``, handed to the
            # run write) and notify alerts published, whose outcome the core must know
            # before anything is persisted; ``after``, the effects to carry out after
            # the write: all of them but a job whose payload was not stored
            after = effects
            staged = changes.payloads if wiring.stage_payloads else None
            while True:
                feedback: list[Event] = []
                for effect in pending:
                    cls = effect.__class__
                    if cls is Dispatch:
                        problem = store_payload_now(path, effect) if staged is None \
                            else None
                        if problem is None:
                            problem = await store_payload(path, effect, staged)
                        if problem:
                            feedback.append(DispatchFailed(effect.target_id,
                                                           effect.job_id, problem))
                            after = [e for e in after if e is not effect]
                    elif cls is PublishAlert:
                        error = await publish_alert(wiring.bus, now, run_id, effect)
                        feedback.append(AlertOutcome(effect.step_id, error))
                if not feedback:
                    break
                pending = self._decide_more(feedback, changes, rows)
                after = after + pending
            # state and timeline in one atomic write: a crash keeps both or neither
            # (``_persist``'s first try inlined: one coroutine fewer per batch)
            if changes.header or changes:  # (a step writes its header: no ``__bool__``)
                try:
                    save_now = wiring.save_now
                    if save_now is not None:
                        save_now(run, changes, rows)
                    else:
                        await self.owner.save_changes(run, changes, rows)
                except Exception as exc:
                    await self._persist(changes, rows, exc)
            elif rows:
                await self._persist(changes, rows)
            feedback = await self._after_write(after, run, now, wiring, run_id)
            if not feedback:
                return
            changes = RunChanges()
            rows = []
            effects = pending = self._decide_more(feedback, changes, rows)
            if not effects and not changes and not rows:
                return

    async def _apply_result(self, item: JobResult | ResultRead, tx: Tx) -> None:
        """``_process`` for the commonest batch: one job result from the bus, alone (no
        envelope to answer, no event to tell apart, one ``decide``). When the task's
        wiring writes and hands jobs over at once (``RunWiring.quick``) and the effects are
        only jobs to start, whose inputs the payload store takes at once, and steps
        finished, the batch is carried out here, in one frame: inputs stored, the write,
        the jobs handed over and the hooks called. Anything else (an input not stored at
        once, another effect, a job refused bare, feedback) goes on the general way
        (``_carry_out``, ``_after_write``) from where this stopped.
        tests/engine/test_run_task_paths.py compares the two ways."""
        wiring = self._wiring
        path = wiring.path
        if item.__class__ is ResultRead:
            if not item.done:  # type: ignore[union-attr]
                await item.wait()  # type: ignore[union-attr]
            result: JobResult = item.result  # type: ignore[union-attr]
            output: LoadedOutput | None = item.output  # type: ignore[union-attr]
        else:
            result, output = item, None  # type: ignore[assignment]
        if output is None and result.status is _JOB_SUCCEEDED and result.result_ptr \
                and path is not None:
            # SPEC §8: the core needs a success's payload (read here unless read early)
            output = load_output_now(path, result.result_ptr, wiring.output)
            if output is None:
                output = await load_output(path, result.result_ptr)
        tx.now = now = wiring.now()  # (the working area renewed after the last batch)
        run = tx.run
        try:
            outcome = decide_result_in(tx, result, output)
        except Exception as exc:
            if not isinstance(exc, CordtrioError):
                # a core bug must not kill the engine or other runs
                log.exception("run %s: core failed on %r", self.run_id, item)
        else:
            effects, rows, changes = outcome.effects, outcome.rows, outcome.changes
            effect: Any = _ALL  # told apart by exact type (``x.__class__ is C``)
            if wiring.quick:
                for effect in effects:  # before the write: the jobs' inputs stored
                    cls = effect.__class__
                    if cls is Dispatch:
                        if store_payload_now(path, effect) != "":
                            break  # not stored at once, or refused: ``_carry_out``'s way
                    elif cls is not StepFinished:
                        break
                else:
                    effect = None
            if effect is not None:  # the rest the general way, from ``effect`` on
                await self._carry_out(effects, rows, changes, now, effects if effect is _ALL
                                      else effects[effects.index(effect):])
            else:  # state and timeline in one write, then the jobs and hooks, in order
                if changes.header or changes:
                    try:
                        wiring.save_now(run, changes, rows)  # type: ignore[misc]
                    except Exception as exc:
                        await self._persist(changes, rows, exc)
                elif rows:
                    await self._persist(changes, rows)
                run_id = self.run_id
                for effect in effects:
                    if effect.__class__ is Dispatch:
                        try:
                            sent = wiring.submit_now(  # type: ignore[misc]
                                effect.request, run_id, now, SENDER_ID)
                        except Exception as exc:
                            sent = exc  # (the job is not published: ``_after_write`` says so)
                        if sent is not True:  # refused bare (having done nothing), or failed
                            await self._after_refused(effects, effect, run, now, sent or None)
                            break
                        if not effect.again and (on_dispatched := wiring.on_dispatched) \
                                is not None:
                            try:
                                on_dispatched(run_id, effect.target_id, effect.job_id)
                            except Exception:
                                log.exception("on_step_dispatched hook failed for %s",
                                              effect.job_id)
                    elif (on_finished := wiring.on_finished) is not None:  # StepFinished
                        try:
                            on_finished(run_id, effect.step_id, effect.status)
                        except Exception:
                            log.exception("on_step_finished hook failed for %s/%s",
                                          run_id, effect.step_id)
        if run.status.is_terminal:
            self._finish = self.host.run_finished(self.run_id) or self._finish

    async def _after_refused(self, effects: list[Effect], effect: Dispatch,
                             run: WorkflowRun, now: datetime, failed: Exception | None
                             ) -> None:
        """``_apply_result``'s pass after the write, gone on the general way from the job
        ``effect`` on (refused bare, or its hand-over raised ``failed``): ``_after_write``,
        then its feedback through the core."""
        feedback = await self._after_write(effects[effects.index(effect):], run, now,
                                           self._wiring, self.run_id, failed)
        if feedback:  # a job not published
            changes = RunChanges()
            rows: list[TimelineEvent] = []
            effects = self._decide_more(feedback, changes, rows)
            if effects or changes or rows:
                await self._carry_out(effects, rows, changes, now, effects)

    async def _after_write(self, after: list[Effect], run: WorkflowRun, now: datetime,
                           wiring: RunWiring, run_id: str, failed: Exception | None = None
                           ) -> list[Event]:
        """Carry out what comes after the write, in the order the core gave it: publish
        the jobs, their hooks, the other hooks, cancels, timers (``wiring`` and ``run_id``:
        the task's, as ``_process`` has them at hand; ``failed``: handing the first job
        over bare already failed so, in ``_apply_result``). Returns the feedback for the
        core (a job that could not be published)."""
        feedback: list[Event] = []
        effect: Any  # told apart by exact type (``x.__class__ is C``: not narrowed)
        for effect in after:
            cls = effect.__class__
            if cls is Dispatch:
                if wiring.config is None:  # ``publish_job`` without a config, inline
                    try:  # handed over bare when the bus can (no packet built: it keeps
                        # the packet's fields), else (``effects.packet``, inline, its fields
                        # set one by one: a third less than ``__init__``;
                        # tests/engine/test_engine_api.py compares the packet with
                        # ``BusPacket(...)``'s)
                        if failed is not None:
                            raise failed
                        submit_now = wiring.submit_now
                        if submit_now is None or not submit_now(effect.request, run_id, now,
                                                                SENDER_ID):
                            request = _new(BusPacket)
                            request.trace_id = run_id
                            request.sender_id = SENDER_ID
                            request.created_at = now
                            request.protocol_version = PROTOCOL_VERSION
                            request.payload = effect.request
                            # (a bus that hands requests over bare takes a packet at
                            # once on the same terms: refused bare, it is awaited)
                            publish_now = wiring.publish_now if submit_now is None else None
                            if publish_now is None or not publish_now(SUBJECT_SUBMIT,
                                                                      request):
                                await wiring.bus.publish(SUBJECT_SUBMIT, request)
                        problem = ""
                    except Exception as exc:
                        failed = None
                        problem = f"publish {effect.job_id}: {exc}"
                else:
                    problem = await publish_job(wiring.bus, now, wiring.config, run_id, run,
                                                effect)
                if problem:
                    feedback.append(DispatchFailed(effect.target_id, effect.job_id, problem))
                elif not effect.again and (on_dispatched := wiring.on_dispatched) is not None:
                    try:
                        on_dispatched(run_id, effect.target_id, effect.job_id)
                    except Exception:
                        log.exception("on_step_dispatched hook failed for %s", effect.job_id)
            elif cls is StepFinished:
                if (on_finished := wiring.on_finished) is not None:
                    try:
                        on_finished(run_id, effect.step_id, effect.status)
                    except Exception:
                        log.exception("on_step_finished hook failed for %s/%s",
                                      run_id, effect.step_id)
            elif cls is CancelJob:
                await publish_cancel(wiring.bus, now, run_id, effect)
            elif cls is ArmTimer:
                self._timers.arm(effect, wiring.now())
        return feedback

    def _decide_more(self, events: Iterable[Event], changes: RunChanges,
                     rows: list[TimelineEvent]) -> list[Effect]:
        """Feed shell feedback to the core; merge its changes and timeline rows into
        ``changes`` and ``rows``, return its effects."""
        assert self.plan is not None and self.state is not None
        effects: list[Effect] = []
        for event in events:
            outcome = decide(self.plan, self.state, event, self._wiring.now())
            effects.extend(outcome.effects)
            rows.extend(outcome.rows)
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
_new = object.__new__
_NO_TIME = datetime.min  # a working area's time until it is renewed for an event
_JOB_SUCCEEDED = JobStatus.SUCCEEDED


_ALL: Any = object()  # (``_apply_result``: none of the effects carried out yet)
_NOTHING: list[Item] = []  # no batch in flight (never changed: ``in_flight`` sees no item)


__all__ = ["Envelope", "Finish", "Preload", "Redirect", "RunTask", "RunWiring", "load_output"]
