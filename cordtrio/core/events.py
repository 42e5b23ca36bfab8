"""What the core is fed (events) and what it asks the shell to do (effects).

Events are facts or commands for one run; effects are instructions the Trio shell carries
out in a fixed order (see ``cordtrio.engine.run_task``). Both are plain dataclasses with
value equality, so a simulation can record, compare and replay them, and nothing changes
one once it is built.

Commands, timers and cancellations are frozen (hashable values: tests compare sets of
timers). The three built on every job result (``ResultReceived``, ``LoadedOutput``,
``Dispatch``) are not frozen: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, ~4x the cost, and a W1 result builds several. Two hold a dict or a
document, so they were never hashable anyway; nothing hashes ``LoadedOutput``. The core
makes ``Dispatch`` on its hot path with its fields set one by one, without ``__init__`` (a
third less). ``StepFinished`` is frozen: a plain job's success shares one, made once per
workflow version (``PlainJob.succeeded``), by every run of it — frozen, no run can change
another's.

Timeline rows are not effects: ``decide`` returns them apart (``Outcome.rows``), each
``TimelineEvent`` itself the instruction to record it with the batch's state (no wrapper
object, which cost as much as the row), so that the shell hands them to the write as they
are and goes over the effects alone, one by one, in the core's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..model import StepStatus
from ..protocol import JobRequest, JobResult, SystemAlert

# ------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Start:
    """Start (or nudge) the run: run a ready pass."""


@dataclass(frozen=True)
class Recover:
    """The run was loaded by a (re)started engine: rebuild indexes, re-arm every timer,
    then run a ready pass. Nothing already running is dispatched again."""


@dataclass(slots=True)
class LoadedOutput:
    """A job's result payload as the shell loaded it (SPEC §8).

    ``value`` is the decoded JSON (or the raw string when not JSON); ``too_large`` means the
    payload exceeded the inline limit and only the pointer is recorded; ``error`` is set when
    loading failed (the pointer is then recorded alone).

    Loaded without ``error``, it says the shell read the payload at the result's pointer,
    which a shell does only for a pointer of the payload namespace (``key_from_pointer``,
    ``RESULT_PREFIX``): the core checks only a pointer the shell did not read at.
    """

    value: Any = None
    too_large: bool = False
    error: str = ""
    loaded: bool = True


@dataclass(slots=True)
class ResultReceived:
    result: JobResult
    output: LoadedOutput | None = None


@dataclass(frozen=True)
class JobStarted:
    """A worker acknowledged starting ``job_id`` (SPEC §6/§13): its step's timeout counts
    from now. Stale or unknown jobs change nothing."""

    job_id: str


@dataclass(frozen=True)
class ResendDue:
    """Publish again every running job that has had no result for ``plan.resend_after``
    seconds (SPEC §13); the shell sends it to active runs every ``resend_after``."""


@dataclass(frozen=True)
class Approve:
    step_id: str
    approved: bool = True


@dataclass(frozen=True)
class CancelRun:
    reason: str = "workflow run cancelled"


class TimerKind(StrEnum):
    WAKE = "wake"  # a delay ends or a backoff expires: run a ready pass
    STEP_TIMEOUT = "step_timeout"  # a job's timeout_sec elapsed
    RUN_TIMEOUT = "run_timeout"  # the workflow's timeout_sec elapsed


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind
    target: str = ""
    job_id: str = ""


@dataclass(frozen=True)
class DispatchFailed:
    """Storing the payload or publishing the job failed; the step fails (SPEC §5)."""

    target_id: str
    job_id: str
    message: str


@dataclass(frozen=True)
class AlertOutcome:
    """The shell published (``error == ""``) or failed to publish a notify step's alert."""

    step_id: str
    error: str = ""


Event = (
    Start | Recover | ResultReceived | JobStarted | Approve | CancelRun | TimerFired
    | DispatchFailed | AlertOutcome | ResendDue
)

# ----------------------------------------------------------------------------- effects


@dataclass(slots=True)
class Dispatch:
    """Store ``payload`` at ``context_key`` (when set), then publish ``request``.

    ``again``: the same attempt published once more after a restart (SPEC §12: the job may
    have died with the old engine); it is not a new dispatch (no hook)."""

    step_id: str
    target_id: str
    job_id: str
    request: JobRequest
    payload: dict[str, Any]
    context_key: str = ""
    again: bool = False


@dataclass(frozen=True)
class PublishAlert:
    """Publish a notify step's alert; report back with ``AlertOutcome``."""

    step_id: str
    alert: SystemAlert


@dataclass(frozen=True)
class CancelJob:
    """Publish a ``JobCancel`` for a running job."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class ArmTimer:
    """Feed ``TimerFired(kind, target, job_id)`` back at ``at`` (wall clock)."""

    at: datetime
    kind: TimerKind
    target: str = ""
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class StepFinished:
    """Call the ``on_step_finished`` hook."""

    step_id: str
    status: StepStatus


Effect = Dispatch | PublishAlert | CancelJob | ArmTimer | StepFinished
