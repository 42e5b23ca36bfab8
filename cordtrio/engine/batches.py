"""How a run task carries out what the core decided for a batch (``BatchEffects``, a part
of ``run_task.RunTask``), in the order of ``run_task``'s docstring: the pass before the
write (job inputs stored, alerts published: the core hears how they went), the write of
the changes and timeline rows, the pass after it (jobs published, hooks, cancels,
timers), and feedback through the core until nothing is left (``_carry_out``,
``_after_write``).

The commonest batch, one job result from the bus alone, is applied on a short path
(``_apply_result``): one ``decide``, and, on an engine that writes and hands jobs over
without awaiting (``RunWiring.quick``), its plain effects carried out in one frame; it
goes on the general way for anything else, from where it stopped.
tests/engine/test_run_task_paths.py drives the same runs both ways and compares them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

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
    StepFinished,
)
from ..core.machine import decide, decide_result_in
from ..core.plan import SENDER_ID, Plan
from ..core.state import RunState, Tx
from ..errors import CordtrioError
from ..model import TimelineEvent, WorkflowRun
from ..ports import RunChanges
from ..protocol import SUBJECT_SUBMIT, JobResult, JobStatus
from ..retry import retry_after
from .effects import (
    load_output,
    load_output_now,
    publish_alert,
    publish_cancel,
    publish_job,
    request_packet,
    stage_payload,
    store_payload,
    store_payload_now,
)
from .envelopes import Finish, ResultRead
from .host import Ownership, RunHost, RunWiring
from .timers import Timers

log = logging.getLogger("cordtrio.engine")


class BatchEffects:
    """A run task's carrying out of its batches' effects (``RunTask`` is one)."""

    # what the run task has (``RunTask.__init__``, ``_load``)
    host: RunHost
    owner: Ownership
    run_id: str
    plan: Plan | None
    state: RunState | None
    _wiring: RunWiring
    _timers: Timers
    _finish: Finish | None
    creating: str  # the run is not stored yet: the token of the write to create it
    final_mark: tuple[float, int] | None  # taken as the run's last write went

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
                            else stage_payload(path, effect, staged)
                        if problem is None:  # (not stored at once: awaited)
                            problem = await store_payload(path, effect)
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
            if self.creating:
                # The run's first write, which creates it, whole (``submit`` built it
                # without writing it): always made, and retried with the same token, so a
                # try whose reply was lost does not make the next fail. Only this pass
                # makes it: the first batch of a run not created yet is the start
                # ``submit`` sent (an envelope, never ``_apply_result``'s), and a task
                # whose first batch wrote nothing ends (``RunTask._loop``).
                changes.created = self.creating
            if changes.header or changes:  # (a step writes its header: no ``__bool__``)
                if run.status.is_terminal:
                    _last_write(changes, after)
                    self.final_mark = wiring.final_mark()
                try:
                    save_now = wiring.save_now
                    if save_now is not None:
                        save_now(run, changes, rows)
                    else:
                        await self.owner.save_changes(run, changes, rows)
                except Exception as exc:
                    await self._persist(changes, rows, exc)
                if changes.created:  # the run is stored now (the record may be the
                    changes.created = self.creating = ""  # task's working area's: reused)
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
                # before the write: the jobs' inputs stored at once, or staged for the
                # write (a store that commits them)
                for effect in effects:
                    cls = effect.__class__
                    if cls is Dispatch:
                        if (stage_payload(path, effect, changes.payloads)
                                if wiring.stage_payloads
                                else store_payload_now(path, effect)) != "":
                            break  # not stored at once, or refused: ``_carry_out``'s way
                    elif cls is not StepFinished:
                        break
                else:
                    effect = None
            if effect is not None:  # the rest the general way, from ``effect`` on
                await self._carry_out(effects, rows, changes, now, effects if effect is _ALL
                                      else effects[_position(effects, effect):])
            else:  # state and timeline in one write, then the jobs and hooks, in order
                if changes.header or changes:
                    if run.status.is_terminal:
                        _last_write(changes, effects)
                        self.final_mark = wiring.final_mark()
                    try:
                        if wiring.save_now is not None:
                            wiring.save_now(run, changes, rows)
                        else:  # (fenced by a lease, or a store out of process)
                            await self.owner.save_changes(run, changes, rows)
                    except Exception as exc:
                        await self._persist(changes, rows, exc)
                elif rows:
                    await self._persist(changes, rows)
                run_id = self.run_id
                for effect in effects:
                    if effect.__class__ is Dispatch:
                        try:
                            taken = wiring.submit_now(  # type: ignore[misc]
                                effect.request, run_id, now, SENDER_ID)
                        except Exception as exc:
                            # (the job is not published: ``_after_write`` says so)
                            taken = exc
                        if taken is not True and (not taken or isinstance(taken, Exception)):
                            # refused bare (having done nothing: True), or failed
                            await self._after_refused(effects, _position(effects, effect),
                                                      run, now, taken or True)
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

    async def _after_refused(self, effects: list[Effect], position: int,
                             run: WorkflowRun, now: datetime, refused: Exception | bool
                             ) -> None:
        """``_apply_result``'s pass after the write, gone on the general way from the job
        at ``position`` on (``refused`` bare: True, or the exception its hand-over
        raised): ``_after_write``, then its feedback through the core."""
        feedback = await self._after_write(effects[position:], run, now,
                                           self._wiring, self.run_id, refused)
        if feedback:  # a job not published
            changes = RunChanges()
            rows: list[TimelineEvent] = []
            effects = self._decide_more(feedback, changes, rows)
            if effects or changes or rows:
                await self._carry_out(effects, rows, changes, now, effects)

    async def _after_write(self, after: list[Effect], run: WorkflowRun, now: datetime,
                           wiring: RunWiring, run_id: str,
                           refused: Exception | bool = False) -> list[Event]:
        """Carry out what comes after the write, in the order the core gave it: publish
        the jobs, their hooks, the other hooks, cancels, timers (``wiring`` and ``run_id``:
        the task's, as ``_process`` has them at hand; ``refused``: the first job was
        offered bare already, in ``_apply_result``, and refused (True) or failed so (an
        exception): it is not offered again). Returns the feedback for the core (a job
        that could not be published)."""
        feedback: list[Event] = []
        effect: Any  # told apart by exact type (``x.__class__ is C``: not narrowed)
        for effect in after:
            cls = effect.__class__
            if cls is Dispatch:
                if wiring.config is None:  # ``publish_job`` without a config, inline
                    try:  # handed over bare when the bus can (no packet built: it keeps
                        # the packet's fields), else in a packet (``request_packet``)
                        submit_now = wiring.submit_now
                        if refused is not False:  # offered bare already (the first job)
                            offered, refused = refused, False
                            if offered is not True:
                                raise offered
                            taken = False
                        else:
                            taken = submit_now is not None and submit_now(
                                effect.request, run_id, now, SENDER_ID)
                        if not taken:
                            request = request_packet(now, run_id, effect.request)
                            # (a bus that hands requests over bare takes a packet at
                            # once on the same terms: refused bare, it is awaited)
                            publish_now = wiring.publish_now if submit_now is None else None
                            if publish_now is None or not publish_now(SUBJECT_SUBMIT,
                                                                      request):
                                await wiring.bus.publish(SUBJECT_SUBMIT, request)
                        problem = ""
                    except Exception as exc:
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
_JOB_SUCCEEDED = JobStatus.SUCCEEDED

__all__ = ["BatchEffects"]


_ALL: Any = object()  # (``_apply_result``: none of the effects carried out yet)


def _last_write(changes: RunChanges, after: list[Effect]) -> None:
    """The write of a terminal run may release the run's lease with it (multi-engine mode:
    ``RunChanges.release_lease``; ``leases.LeaseKeeper``), unless a job is to be published
    after it (dispatched by an event of the batch before another ended the run): that
    needs the lease still. Cancels and hooks do not."""
    for effect in after:
        if effect.__class__ is Dispatch:
            return
    changes.release_lease = True


def _position(effects: list[Effect], effect: Effect) -> int:
    """Where ``effect`` is in ``effects`` (by identity: effects are values, and two jobs'
    may be equal)."""
    for position, other in enumerate(effects):
        if other is effect:
            return position
    raise ValueError(f"{effect!r} is not among the batch's effects")
