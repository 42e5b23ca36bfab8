"""The outcome oracle: a small reference model of what SPEC §3–§9 imply for the events a
scenario actually delivered, independent of ``cordtrio.core``.

The structural invariants (``invariants``) check shapes: attempts, parallelism, order. The
oracle checks that each run ended the way it *should* have, given what happened to it. It
records, per run, what the engines could have applied: the job results sent (by workers,
and the bus's own "worker lost" results), the job cancels sent, the approvals and
rejections asked for, the cancels asked for, the dispatch time of each job id, and when
the engines crashed and came back. Then, on every stored state of a run (each one compared
with the one stored before it) and at the end, it applies these rules:

``justified``
    A job step (or fan-out child) that leaves ``running`` with job id J does so because of
    J: ``succeeded`` needs a SUCCEEDED result for J; a retry (``pending``, or a new job id)
    or ``failed`` needs a FAILED/DENIED result for J (or a TIMEOUT result, or J's step
    timeout elapsed, for a retry or ``timed_out``); ``cancelled`` needs a CANCELLED result,
    the run ending or the fan-out failing in the same write. A result of another attempt
    (a stale job id) justifies nothing. An approval leaves ``waiting`` only as asked.
``sibling_cancel``
    A failed fan-out parent has no child still running or pending.
``job_cancel``
    Every job that was running when its step was cancelled (run cancelled, failed or timed
    out; fan-out failed) is sent a ``JobCancel`` (checked at the end).
``finished``
    A terminal run has no step or child running, pending or waiting.
``run_status``
    A terminal run's status is what §7 computes from its steps (``succeeded``, ``failed``,
    ``timed_out`` from a step); ``timed_out`` needs the workflow timeout elapsed (or a step
    timed out); ``cancelled`` needs a cancel request.
``gate``
    A step whose ``condition`` gate is false is skipped: ``succeeded`` without a job, with a
    ``step_skipped`` timeline event. A step whose gate is true is never skipped.
``run_timeout``
    A run with ``timeout_sec`` ends by ``started_at + timeout_sec`` (plus ``SLACK``, and
    plus the time the engines took to come back when one crashed); one that ends later
    ends ``timed_out`` (or ``cancelled``).
``timer``
    A retry backoff, a delay or a run timeout fires: a step waiting for its
    ``next_attempt_at`` is dispatched (or ends) by then plus ``SLACK``, measured from the
    later of the deadline and the last engine disruption (a crash, plus the lease TTL with
    leases; a restart).

A violation names the run, the step, the job id, the rule and the trace lines about that
job or step that led there.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backends.job_queues import WORKER_LOST
from ..errors import CordtrioError
from ..expr import evaluate
from ..model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    StepType,
    TimelineEvent,
    Workflow,
    WorkflowRun,
)
from ..protocol import BusPacket, JobCancel, JobRequest, JobResult, JobStatus
from .invariants import copied_by_rerun

__all__ = ["MULTI_ENGINE_SITUATIONS", "ORACLE_RULES", "RUN_SLACK", "SITUATIONS", "SLACK",
           "Oracle", "expected_status"]

SITUATIONS = ("recovery with a pending timer", "sibling cancel", "gate skip", "run timeout",
              "worker lost", "crash with a pending timer", "crash right after a restart",
              "ambiguous write", "run cancelled", "rerun")
"""Interesting situations the oracle counts (``SimulationReport.situations``): an engine
(re)opened while a stored run waited for a retry or delay timer; a failed fan-out's
siblings cancelled; a false gate skipping its step; a run ending by its workflow timeout;
a job reported lost by the bus after its redeliveries; an engine crashed while a retry or
delay timer was pending; an engine crashed as it reopened after a crash; a store write
applied whose reply was lost; a run ended ``cancelled`` (on request); a run rerun (SPEC
§9) accepted. (The scenario notes the crashes, the ambiguous writes, the reruns and
``MULTI_ENGINE_SITUATIONS``.)"""

MULTI_ENGINE_SITUATIONS = ("takeover before restart",)
"""Situations only scenarios with several engines reach: an engine took over a crashed
engine's run (its lease expired) before the crashed engine came back."""

ORACLE_RULES = ("justified", "sibling_cancel", "job_cancel", "finished", "run_status", "gate",
                "run_timeout", "timer")

SLACK = 30.0
"""Virtual seconds a timer may fire late: store retries and batching, never a lost timer."""

RUN_SLACK = 10.0
"""Virtual seconds past its timeout (and the last engine disruption) a run may end in
another status than ``timed_out``."""

ENGINE_TYPES = (StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY)
_RUNNING, _PENDING, _WAITING = StepStatus.RUNNING, StepStatus.PENDING, StepStatus.WAITING
_SUCCEEDED, _FAILED = StepStatus.SUCCEEDED, StepStatus.FAILED
_CANCELLED, _TIMED_OUT = StepStatus.CANCELLED, StepStatus.TIMED_OUT
_RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.DENIED, JobStatus.TIMEOUT})
_OPEN = frozenset({_RUNNING, _PENDING, _WAITING})
_RUN_TIMER = "(run timeout)"

Fail = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class _Seen:
    """One step or child as stored: what the rules compare between two writes."""

    status: StepStatus
    job_id: str
    attempts: int
    due: datetime | None
    started: datetime | None


def _targets(run: WorkflowRun) -> Iterator[tuple[str, str, StepRun]]:
    """(step id, target id, StepRun) of every step and child."""
    for sid, sr in run.steps.items():
        yield sid, sid, sr
        for cid, child in sr.children.items():
            yield sid, cid, child


def expected_status(wf: Workflow, run: WorkflowRun,
                    stopped: frozenset[str] | set[str] = frozenset()) -> RunStatus:
    """SPEC §7, written from the spec: over the steps that count (an untriggered on_error
    handler does not), any failed/cancelled → failed (but running while a triggered handler
    is unfinished), else any timed_out → timed_out, else any waiting → waiting, else all
    succeeded → succeeded, else running. Steps in ``stopped`` (cancelled by the run's own
    end) count as still running."""
    handlers = {s.on_error for s in wf.steps.values() if s.on_error}
    statuses = []
    handler_open = False
    for sid in wf.steps:
        sr = run.steps.get(sid)
        if sid in handlers and sr is None:
            continue
        status = sr.status if sr is not None else _PENDING
        if sid in stopped:
            status = _RUNNING
        statuses.append(status)
        if sid in handlers and status in _OPEN:
            handler_open = True
    if any(s in (_FAILED, _CANCELLED) for s in statuses):
        return RunStatus.RUNNING if handler_open else RunStatus.FAILED
    if any(s == _TIMED_OUT for s in statuses):
        return RunStatus.RUNNING if handler_open else RunStatus.TIMED_OUT
    if any(s == _WAITING for s in statuses):
        return RunStatus.WAITING
    if all(s == _SUCCEEDED for s in statuses):
        return RunStatus.SUCCEEDED
    return RunStatus.RUNNING


class Oracle:
    """The reference model (see the module docstring). ``now`` is the virtual time;
    ``epoch`` is the wall-clock time at virtual time 0."""

    def __init__(self, workflows: Sequence[Workflow], fail: Fail, trace: list[str],
                 epoch: datetime, *, lease_ttl: float = 0.0) -> None:
        self.workflows = {wf.id: wf for wf in workflows}
        self.fail = fail
        self.trace = trace
        self.epoch = epoch
        self.lease_ttl = lease_ttl
        self.results: dict[str, dict[JobStatus, float]] = {}  # job -> status -> first seen
        self.cancels: dict[str, float] = {}  # job -> first JobCancel sent
        self.dispatched: dict[str, float] = {}  # job -> first dispatch
        self.approvals: dict[tuple[str, str], set[bool]] = {}
        self.cancel_requests: set[str] = set()
        self.prev: dict[str, dict[str, _Seen]] = {}
        self.prev_status: dict[str, RunStatus] = {}
        self.owed: dict[str, tuple[str, str, float]] = {}  # job -> (run, target, when)
        self.due: dict[tuple[str, str], float] = {}  # (run, target) -> virtual deadline
        self._heap: list[tuple[float, str, str]] = []
        self.disrupted = 0.0  # the last engine crash (+ lease TTL) or restart
        self.crashes: list[float] = []
        self.skipped: set[tuple[str, str]] = set()  # step_skipped timeline events
        self.counts: dict[str, int] = {}  # interesting situations, by name

    # ----------------------------------------------------------------- observations

    def vt(self, when: datetime) -> float:
        return (when - self.epoch).total_seconds()

    def note(self, situation: str) -> None:
        self.counts[situation] = self.counts.get(situation, 0) + 1

    def published(self, subject: str, packet: BusPacket, now: float) -> None:
        """A packet was sent (worker results, engine requests and cancels, bus results)."""
        p = packet.payload
        if isinstance(p, JobResult):
            if p.job_id not in self.results and p.error_code == WORKER_LOST:
                self.note("worker lost")
            self.results.setdefault(p.job_id, {}).setdefault(p.status, now)
        elif isinstance(p, JobCancel):
            self.cancels.setdefault(p.job_id, now)
        elif isinstance(p, JobRequest):
            self.dispatched.setdefault(p.job_id, now)

    def job_dispatched(self, job_id: str, now: float) -> None:
        self.dispatched.setdefault(job_id, now)

    def approval(self, run_id: str, step_id: str, approved: bool) -> None:
        self.approvals.setdefault((run_id, step_id), set()).add(approved)

    def cancel_requested(self, run_id: str) -> None:
        self.cancel_requests.add(run_id)

    def engine_crashed(self, now: float) -> None:
        self.crashes.append(now)
        self.disrupted = max(self.disrupted, now + self.lease_ttl)

    def timer_pending(self) -> bool:
        """A stored run waits for a retry backoff or a delay (not its workflow timeout)."""
        return any(target != _RUN_TIMER for _, target in self.due)

    def engine_up(self, now: float) -> None:
        if self.timer_pending():
            self.note("recovery with a pending timer")
        self.disrupted = max(self.disrupted, now)

    def timeline(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        for e in events:
            if e.type == "step_skipped":
                self.skipped.add((run_id, e.step_id))

    # -------------------------------------------------------------------- helpers

    def _had(self, job_id: str, statuses: Sequence[JobStatus] | frozenset[JobStatus]) -> bool:
        seen = self.results.get(job_id)
        return seen is not None and any(s in seen for s in statuses)

    def _timed_out(self, job_id: str, step: Step, now: float, seen: _Seen) -> bool:
        """``job_id``'s step timeout elapsed: counted from its first dispatch or from the
        start the run stored (a job committed but not yet published counts from there)."""
        if step.timeout_sec <= 0:
            return False
        starts = [self.vt(seen.started)] if seen.started is not None else []
        if job_id in self.dispatched:
            starts.append(self.dispatched[job_id])
        return bool(starts) and now + 1e-6 >= min(starts) + float(step.timeout_sec)

    def violation(self, rule: str, run_id: str, target: str, job_id: str, what: str) -> None:
        keys = [k for k in (job_id, f"{run_id}:{target}" if target else "") if k]
        lines = [f"    #{i} {line}" for i, line in enumerate(self.trace)
                 if any(k in line for k in keys) or (not keys and run_id in line)][-8:]
        where = f"run {run_id}" + (f" step {target}" if target else "") + (
            f" job {job_id}" if job_id else "")
        self.fail("oracle", f"rule {rule}: {where}: {what}"
                  + ("\n  trace lines that led there:\n" + "\n".join(lines) if lines else ""))

    # ------------------------------------------------------------- on each write

    def saved(self, run: WorkflowRun, now: float) -> None:
        """The engine stored ``run``: compare with the state stored before."""
        wf = self.workflows.get(run.workflow_id)
        if wf is None:
            return
        rid = run.id
        before = self.prev.get(rid, {})
        was = self.prev_status.get(rid)
        after: dict[str, _Seen] = {}
        ended = run.status.is_terminal
        # once a step has failed, only on_error handlers progress (SPEC §7: the failure
        # stands): other steps' backoffs need not fire
        failing = any(sr.status in (_FAILED, _TIMED_OUT, _CANCELLED)
                      for sr in run.steps.values())
        copied = copied_by_rerun(wf, run) if rid not in self.prev else set()
        for sid, target, sr in _targets(run):
            seen = _Seen(sr.status, sr.job_id, sr.attempts, sr.next_attempt_at, sr.started_at)
            after[target] = seen
            old = before.get(target)
            if old is None and sid in copied:
                continue  # copied by a rerun from the run it reruns: done there
            if old != seen:
                step = wf.steps.get(sid)
                if step is not None:
                    self._changed(run, wf, step, sid, target, old, seen, now)
            if (seen.due is not None and seen.status in (_PENDING, _RUNNING) and not ended
                    and not failing
                    and (target == sid or wf.steps[sid].max_parallel == 0)):
                # (a fan-out child due for a retry may wait for a free slot)
                self._arm(rid, target, self.vt(seen.due))
            else:
                self.due.pop((rid, target), None)
        self.prev[rid] = after
        self.prev_status[rid] = run.status
        if wf.timeout_sec > 0 and run.started_at is not None and not ended:
            self._arm(rid, _RUN_TIMER, self.vt(run.started_at) + wf.timeout_sec)
        if ended and not (was is not None and was.is_terminal):
            if run.status == RunStatus.CANCELLED:
                self.note("run cancelled")
            self._run_ended(run, wf, now, before)
        if ended:
            for key in [k for k in self.due if k[0] == rid]:
                del self.due[key]
        self.overdue(now)

    def _changed(self, run: WorkflowRun, wf: Workflow, step: Step, sid: str, target: str,
                 old: _Seen | None, new: _Seen, now: float) -> None:
        rid = run.id
        parent = run.steps.get(sid) if target != sid else None
        if step.type in ENGINE_TYPES:
            if step.type == StepType.APPROVAL and old is not None and old.status == _WAITING \
                    and new.status in (_SUCCEEDED, _FAILED):
                asked = self.approvals.get((rid, sid), set())
                if (new.status == _SUCCEEDED) not in asked:
                    self.violation("justified", rid, sid, "", f"approval went "
                                   f"{new.status.value}, but nobody asked for that "
                                   f"(asked: {sorted(asked) or 'nothing'})")
            return
        if step.condition and target == sid and new.status.is_terminal and not new.job_id:
            self._gate(run, wf, step, new)
        if new.status == _FAILED and run.steps[sid].children and target == sid:
            open_children = [c for c, s in run.steps[sid].children.items()
                             if s.status in _OPEN]
            if open_children:
                self.violation("sibling_cancel", rid, sid, "", f"fan-out failed while "
                               f"children {open_children[:4]} are still "
                               f"{run.steps[sid].children[open_children[0]].status.value}")
            elif any(s.status == _CANCELLED for s in run.steps[sid].children.values()):
                self.note("sibling cancel")
        if old is None or old.status != _RUNNING or not old.job_id:
            return
        job = old.job_id
        if new.job_id != job:  # a new attempt: J1 must have failed or timed out
            if not (self._had(job, _RETRYABLE) or self._timed_out(job, step, now, old)):
                self.violation("justified", rid, target, job, f"a new attempt "
                               f"{new.job_id} was dispatched, but {job} had no "
                               f"failed/denied/timeout result and did not time out "
                               f"({self._results_of(job)})")
            return
        if new.status == _RUNNING:
            return
        ok: bool
        if new.status == _SUCCEEDED:
            ok = self._had(job, (JobStatus.SUCCEEDED,))
            why = "succeeded without a SUCCEEDED result for its current job"
        elif new.status == _PENDING:
            ok = self._had(job, _RETRYABLE) or self._timed_out(job, step, now, old)
            why = "went back to pending (a retry) without a failed result or timeout"
        elif new.status == _FAILED:
            ok = self._had(job, (JobStatus.FAILED, JobStatus.DENIED)) or any(
                s not in (JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.TIMEOUT,
                          JobStatus.FAILED, JobStatus.DENIED)
                for s in self.results.get(job, {}))
            why = "failed without a failed or denied result for its current job"
        elif new.status == _TIMED_OUT:
            ok = self._had(job, (JobStatus.TIMEOUT,)) or self._timed_out(job, step, now, old)
            why = "timed out before its timeout and without a TIMEOUT result"
        elif new.status == _CANCELLED:
            stopped = run.status.is_terminal or (parent is not None and parent.status in (
                _FAILED, _CANCELLED, _TIMED_OUT))
            ok = self._had(job, (JobStatus.CANCELLED,)) or stopped
            why = "was cancelled though neither its run nor its fan-out ended"
            if stopped and not self.results.get(job):  # (a job that answered needs none)
                self.owed.setdefault(job, (rid, target, now))
        else:
            return
        if not ok:
            self.violation("justified", rid, target, job, f"{why} ({self._results_of(job)})")

    def _results_of(self, job_id: str) -> str:
        seen = self.results.get(job_id)
        if not seen:
            return "no result for it was sent"
        return "results sent for it: " + ", ".join(
            f"{s.name} at {t:.6f}" for s, t in sorted(seen.items(), key=lambda kv: kv[1]))

    def _gate(self, run: WorkflowRun, wf: Workflow, step: Step, new: _Seen) -> None:
        if new.status in (_CANCELLED, _TIMED_OUT):
            return
        scope: dict[str, Any] = {"input": run.input, "ctx": run.context,
                                 "steps": run.context.get("steps") or {}}
        try:
            value = evaluate(step.condition, scope)
        except CordtrioError:
            return  # an evaluation error fails the step: not this rule's business
        truthy = value not in (None, False, "", 0) and value != 0.0
        if not truthy:
            self.note("gate skip")
            if new.status != _SUCCEEDED or new.attempts:
                self.violation("gate", run.id, step.id, "", f"its condition "
                               f"{step.condition!r} is false: it must be skipped "
                               f"(succeeded, no job), but it is {new.status.value}")
        elif new.status == _SUCCEEDED and not step.for_each:
            self.violation("gate", run.id, step.id, "", f"its condition "
                           f"{step.condition!r} is true, but it succeeded without a job")

    def _run_ended(self, run: WorkflowRun, wf: Workflow, now: float,
                   before: dict[str, _Seen]) -> None:
        rid = run.id
        for _, target, sr in _targets(run):
            if sr.status in _OPEN:
                self.violation("finished", rid, target, sr.job_id, f"the run is "
                               f"{run.status.value} but this is still {sr.status.value}")
                return
        status = run.status
        started = self.vt(run.started_at) if run.started_at is not None else None
        deadline = (started + wf.timeout_sec if started is not None and wf.timeout_sec > 0
                    else None)
        if status == RunStatus.CANCELLED:
            if rid not in self.cancel_requests:
                self.violation("run_status", rid, "", "", "cancelled, but nobody asked")
            return
        if status == RunStatus.TIMED_OUT and deadline is not None and now + 1e-6 >= deadline:
            self.note("run timeout")
            return
        # cancelled by the run's own end: open before, and not by a CANCELLED result of
        # the job it was running (a pending retry's old job may have reported one)
        stopped = {sid for sid, sr in run.steps.items() if sr.status == _CANCELLED
                   and (sid not in before or before[sid].status in _OPEN)
                   and not (sid in before and before[sid].status == _RUNNING
                            and self._had(sr.job_id, (JobStatus.CANCELLED,)))}
        expected = expected_status(wf, run, stopped)
        if expected != status:
            self.violation("run_status", rid, "", "", f"ended {status.value}, but its "
                           f"steps say {expected.value} "
                           f"({', '.join(f'{k}:{v.status.value}' for k, v in run.steps.items())})")
            return
        if deadline is not None and now > max(deadline, self.disrupted) + RUN_SLACK:
            self.violation("run_timeout", rid, "", "", f"ended {status.value} at "
                           f"{now:.6f}, past its timeout_sec {wf.timeout_sec} (started "
                           f"{started:.6f}, deadline {deadline:.6f})")

    # --------------------------------------------------------------------- timers

    def _arm(self, rid: str, target: str, at: float) -> None:
        if self.due.get((rid, target)) != at:
            self.due[(rid, target)] = at
            heapq.heappush(self._heap, (at, rid, target))

    def overdue(self, now: float) -> None:
        """Fail ``timer`` for a deadline long past while the engines were up."""
        heap = self._heap
        while heap and heap[0][0] + SLACK < now:
            at, rid, target = heap[0]
            if self.due.get((rid, target)) != at:
                heapq.heappop(heap)
                continue
            if now <= max(at, self.disrupted) + SLACK:
                return  # an engine came back recently: give it time
            heapq.heappop(heap)
            del self.due[(rid, target)]
            what = ("the workflow timeout" if target == _RUN_TIMER
                    else "its retry backoff or delay")
            self.violation("run_timeout" if target == _RUN_TIMER else "timer", rid,
                           "" if target == _RUN_TIMER else target, "",
                           f"{what} was due at {at:.6f}; at {now:.6f} nothing had happened")
            return

    # --------------------------------------------------------------------- the end

    def final(self, run: WorkflowRun, events: Sequence[TimelineEvent]) -> None:
        """The run as finally stored and its timeline (every run is terminal here)."""
        wf = self.workflows.get(run.workflow_id)
        if wf is None:
            return
        skipped = {e.step_id for e in events if e.type == "step_skipped"}
        skipped |= copied_by_rerun(wf, run)  # skipped (or not) in the run it reruns
        for sid, sr in run.steps.items():
            step = wf.steps.get(sid)
            if (step is not None and step.condition and step.type not in ENGINE_TYPES
                    and sr.status == _SUCCEEDED and not sr.job_id and not sr.children
                    and sid not in skipped):
                self.violation("gate", run.id, sid, "", "succeeded without a job, but "
                               "the timeline has no step_skipped for it")
                return

    def cancels_owed(self) -> None:
        for job, (rid, target, when) in self.owed.items():
            # An engine that crashes between storing the end of a step and publishing its
            # cancels loses them: recovery skips terminal runs. (The job then ends on its
            # own; this is a known gap, not what this rule is after.)
            if job not in self.cancels and not any(when <= t <= when + 1.0
                                                   for t in self.crashes):
                self.violation("job_cancel", rid, target, job, f"its step was cancelled at "
                               f"{when:.6f} while the job ran, but no JobCancel was sent")
                return
