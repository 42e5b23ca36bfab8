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

Timers live in the task (a heap of deadlines on Trio's clock), so cancelling the task's
scope — the run's lifetime — kills them all at once.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    RecordTimeline,
    Recover,
    ResultReceived,
    StepFinished,
    TimerFired,
)
from ..core.machine import decide
from ..core.plan import MAX_INLINE_OUTPUT_BYTES, SENDER_ID, Plan
from ..core.state import RunState
from ..errors import CordtrioError, NotFoundError
from ..model import TimelineEvent
from ..payloads import key_from_pointer
from ..ports import RunChanges
from ..protocol import (
    PROTOCOL_VERSION,
    SUBJECT_CANCEL,
    SUBJECT_SUBMIT,
    SUBJECT_WORKFLOW_EVENT,
    BusPacket,
    JobCancel,
    JobStatus,
)
from .retry import retrying

if TYPE_CHECKING:
    from .supervisor import Engine

log = logging.getLogger("cordtrio.engine")


@dataclass
class Envelope:
    """An event for a run, and (for API calls) a way to wait until it is applied."""

    event: Event
    done: trio.Event | None = None
    error: BaseException | None = None
    fired_at: datetime | None = None  # for timers: the wall time they were armed for


@dataclass(order=True)
class _Timer:
    deadline: float
    seq: int
    event: TimerFired = field(compare=False)
    at: Any = field(compare=False)


class RunTask:
    """Owns one run while it is active in this engine."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self.send, self._receive = trio.open_memory_channel[Envelope](math.inf)
        self.scope = trio.CancelScope()
        self._timers: list[_Timer] = []
        self._armed: set[tuple[str, str, str, Any]] = set()
        self._seq = 0
        self.plan: Plan | None = None
        self.state: RunState | None = None

    # ----------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Load the run, then apply envelopes until the run is terminal and idle."""
        try:
            with self.scope:
                if not await self._load():
                    return
                await self._loop()
        except Exception as exc:  # a shell bug must not take the engine (other runs) down
            log.exception("run %s: task crashed; the run stays in the store", self.run_id)
            self._fail_leftovers(exc)
        finally:
            self.engine._run_exited(self)
            self._fail_leftovers()

    async def _load(self) -> bool:
        engine = self.engine
        try:
            run = await retrying(lambda: engine.store.get_run(self.run_id),
                                 f"load run {self.run_id}")
            plan = await engine._plan_for(run.workflow_id)
        except CordtrioError as exc:
            self._fail_leftovers(exc)
            return False
        self.plan = plan
        self.state = RunState(run)
        return True

    async def _loop(self) -> None:
        assert self.state is not None
        first = True
        while True:
            batch = self._take_ready()
            if first:
                # Re-arm the timers a stored run implies before anything else touches it
                # (a no-op for a run that has not started).
                first = False
                batch.insert(0, Envelope(Recover()))
            if not batch:
                if self.state.run.status.is_terminal:
                    return  # idle and finished: the task ends, state stays in the store
                batch = await self._wait_for_work()
            await self._process(batch)

    def _take_ready(self) -> list[Envelope]:
        batch: list[Envelope] = []
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        batch.extend(self._due_timers())
        return batch

    async def _wait_for_work(self) -> list[Envelope]:
        deadline = self._timers[0].deadline if self._timers else math.inf
        with trio.move_on_at(deadline):
            envelope = await self._receive.receive()
            return [envelope, *self._take_ready()]
        return self._take_ready()

    def _due_timers(self) -> list[Envelope]:
        out: list[Envelope] = []
        now = trio.current_time()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            self._armed.discard((timer.event.kind, timer.event.target, timer.event.job_id,
                                 timer.at))
            out.append(Envelope(timer.event, fired_at=timer.at))
        return out

    def _fail_leftovers(self, error: BaseException | None = None) -> None:
        """Answer envelopes that will never be applied here (the run is gone or ended)."""
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            envelope.error = envelope.error or error or _Redirect()
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
            engine._run_finished(self.run_id)

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
                        problem = await self._store_payload(effect)
                        if problem:
                            failed.add(effect.job_id)
                            feedback.append(
                                DispatchFailed(effect.target_id, effect.job_id, problem))
                    elif isinstance(effect, PublishAlert):
                        error = await self._publish_alert(effect)
                        feedback.append(AlertOutcome(effect.step_id, error))
                queue = self._decide_more(feedback, changes)
            await self._persist(changes, round_effects)
            changes = RunChanges()
            feedback = []
            for effect in round_effects:  # post-commit stage
                if isinstance(effect, Dispatch):
                    if effect.job_id in failed:
                        continue
                    problem = await self._publish_job(effect)
                    if problem:
                        feedback.append(DispatchFailed(effect.target_id, effect.job_id, problem))
                    else:
                        self.engine._hook_dispatched(self.run_id, effect.target_id,
                                                     effect.job_id)
                elif isinstance(effect, CancelJob):
                    await self._publish_cancel(effect)
                elif isinstance(effect, StepFinished):
                    self.engine._hook_finished(self.run_id, effect.step_id, effect.status)
                elif isinstance(effect, ArmTimer):
                    self._arm(effect)
            pending = self._decide_more(feedback, changes)

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
        store = self.engine.store
        run = self.state.run
        events: list[TimelineEvent] = [e.event for e in effects if isinstance(e, RecordTimeline)]
        if changes:  # state and timeline in one atomic write: a crash keeps both or neither
            await retrying(lambda: store.save_run_changes(run, changes, events),
                           f"save run {self.run_id}")
        elif events:
            await retrying(lambda: store.append_timeline_events(self.run_id, events),
                           f"append timeline of run {self.run_id}")

    # ------------------------------------------------------------------- effect I/O

    async def _store_payload(self, effect: Dispatch) -> str:
        payloads = self.engine.payloads
        if not effect.context_key or payloads is None:
            return ""
        try:
            data = json.dumps(effect.payload, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            return f"step input is not JSON: {exc}"
        try:
            await payloads.put_context(effect.context_key, data)
        except Exception as exc:
            return f"store payload {effect.context_key}: {exc}"
        return ""

    async def _publish_job(self, effect: Dispatch) -> str:
        engine = self.engine
        request = effect.request
        if engine.config is not None:
            run = self.state.run if self.state else None
            try:
                cfg = await engine.config.effective(
                    run.org_id if run else "", run.team_id if run else "",
                    request.workflow_id, effect.target_id)
                if cfg:
                    request.env["CORDUM_EFFECTIVE_CONFIG"] = json.dumps(cfg, default=str)
            except Exception:
                log.warning("run %s: config provider failed for step %s", self.run_id,
                            effect.target_id, exc_info=True)
        try:
            await engine.bus.publish(SUBJECT_SUBMIT, self._packet(request))
        except Exception as exc:
            return f"publish {effect.job_id}: {exc}"
        return ""

    async def _publish_alert(self, effect: PublishAlert) -> str:
        try:
            await self.engine.bus.publish(SUBJECT_WORKFLOW_EVENT, self._packet(effect.alert))
        except Exception as exc:
            return f"publish alert: {exc}"
        return ""

    async def _publish_cancel(self, effect: CancelJob) -> None:
        cancel = JobCancel(job_id=effect.job_id, reason=effect.reason, requested_by=SENDER_ID)
        try:
            await self.engine.bus.publish(SUBJECT_CANCEL, self._packet(cancel))
        except Exception:
            log.warning("run %s: could not publish cancel for %s", self.run_id, effect.job_id,
                        exc_info=True)

    def _packet(self, payload: Any) -> BusPacket:
        return BusPacket(trace_id=self.run_id, sender_id=SENDER_ID,
                         created_at=self.engine.clock.now(),
                         protocol_version=PROTOCOL_VERSION, payload=payload)

    def _arm(self, effect: ArmTimer) -> None:
        key = (effect.kind, effect.target, effect.job_id, effect.at)
        if key in self._armed:
            return
        self._armed.add(key)
        delay = (effect.at - self.engine.clock.now()).total_seconds()
        self._seq += 1
        heapq.heappush(self._timers, _Timer(trio.current_time() + max(0.0, delay), self._seq,
                                            TimerFired(effect.kind, effect.target,
                                                       effect.job_id), effect.at))


class _Redirect(CordtrioError):
    """The run's task ended before applying the envelope; deliver it again."""


async def load_output(payloads: Any, result_ptr: str) -> LoadedOutput:
    """Read and decode a result payload (SPEC §8): JSON, else the raw string."""
    try:
        data = await payloads.get_result(key_from_pointer(result_ptr))
    except (ValueError, NotFoundError) as exc:
        return LoadedOutput(error=str(exc), loaded=False)
    except Exception as exc:
        return LoadedOutput(error=f"load {result_ptr}: {exc}", loaded=False)
    text = data.decode("utf-8", errors="replace")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return LoadedOutput(value=value, too_large=len(data) > MAX_INLINE_OUTPUT_BYTES)


Redirect = _Redirect
