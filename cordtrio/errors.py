"""Typed errors of cordtrio.

Every message names the offending id (run, step, workflow, field, key) so that a user
reading a log line knows where to look without a traceback.
"""

from __future__ import annotations


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


class PayloadPointerError(CordtrioError, ValueError):
    """A payload pointer or key outside the payload namespace (``ctx:<job>``/``res:<job>``,
    or their ``redis://`` forms), or malformed. Nothing is read or written for it; the
    message names the pointer."""


class CorruptDataError(CordtrioError):
    """Stored data that cannot be read as what cordtrio stores there (corrupt JSON, a key of
    the wrong type, a missing part). The message names the key. Retrying cannot fix it."""


class StoreError(CordtrioError):
    """A backend (store, payload store, bus) failed; usually transient."""


__all__ = [
    "CordtrioError",
    "CorruptDataError",
    "ExpressionError",
    "InvalidStateError",
    "LeaseLostError",
    "NotFoundError",
    "PayloadPointerError",
    "ProtocolError",
    "StoreError",
    "ValidationError",
]
