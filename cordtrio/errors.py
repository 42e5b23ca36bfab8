"""Typed errors of cordtrio.

Every message names the offending id (run, step, workflow, field, key) so that a user
reading a log line knows where to look without a traceback.
"""

from __future__ import annotations

from typing import Any


class CordtrioError(Exception):
    """Base class of every error cordtrio raises on purpose."""


class NotFoundError(CordtrioError, LookupError):
    """A workflow, run, step, payload or schema that was asked for does not exist."""


class InvalidStateError(CordtrioError):
    """The object exists but is not in a state that allows the operation (e.g. approving a
    step that is not waiting)."""


class ValidationError(CordtrioError, ValueError):
    """A definition, input, output or schema problem. The message names the step/field."""


class ExpressionError(CordtrioError, ValueError):
    """An expression or template that does not parse or cannot be evaluated."""


class ProtocolError(CordtrioError, ValueError):
    """Bytes or a packet that are not a valid cordtrio bus message."""


class LeaseLostError(CordtrioError):
    """An engine wrote (or was about to act) for a run whose lease it no longer holds: another
    engine owns the run now. The write was refused; the engine stops driving that run."""


class StoreError(CordtrioError):
    """A backend (store, payload store, bus) failed; usually transient."""


class RunFailedError(CordtrioError):
    """A run awaited with ``Engine.run`` / ``run_workflow`` ended other than ``succeeded``.

    ``run`` is the final ``WorkflowRun``; ``run_id``, ``status`` (its ``RunStatus``),
    ``step_id`` and ``error_message`` (from ``run.error``: the first failed step and its
    error; empty when none applies, e.g. a cancelled run) are shortcuts."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_id: str = run.id
        self.status = run.status
        error = run.error if isinstance(run.error, dict) else {}
        self.step_id: str = str(error.get("step_id") or "")
        self.error_message: str = str(error.get("message") or "")
        status = getattr(self.status, "value", self.status)
        where = f": step {self.step_id!r}" if self.step_id else ""
        why = f": {self.error_message}" if self.error_message else ""
        super().__init__(f"run {self.run_id!r} of workflow {run.workflow_id!r} "
                         f"ended {status}{where}{why}")


__all__ = [
    "CordtrioError",
    "ExpressionError",
    "InvalidStateError",
    "LeaseLostError",
    "NotFoundError",
    "ProtocolError",
    "RunFailedError",
    "StoreError",
    "ValidationError",
]
