"""Payload pointers: where job inputs (``ctx:<job>``) and results (``res:<job>``) live.

**The payload namespace.** A payload store reads and writes only keys of its own namespace:
``ctx:<job>`` (job inputs) and ``res:<job>`` (job results). A pointer is such a key,
bare or in its ``redis://`` form. Anything else — ``redis://secret:token``, a run's
``wf:run:<id>`` — is refused with ``PayloadPointerError`` naming the pointer, before any
read: a job result or request cannot make the engine or a worker copy an arbitrary key.
``check_payload_key`` is the one rule; every payload store calls it in ``get_*``/``put_*``.
"""

from __future__ import annotations

from .errors import PayloadPointerError

POINTER_SCHEME = "redis://"
CONTEXT_PREFIX = "ctx:"
RESULT_PREFIX = "res:"
PAYLOAD_PREFIXES = (CONTEXT_PREFIX, RESULT_PREFIX)


def context_key(job_id: str) -> str:
    """Key of a job's input payload."""
    return CONTEXT_PREFIX + job_id


def result_key(job_id: str) -> str:
    """Key of a job's result payload."""
    return RESULT_PREFIX + job_id


def pointer_for_key(key: str) -> str:
    """Pointer (as carried in ``context_ptr``/``result_ptr``) for a payload key."""
    return POINTER_SCHEME + key


# What a well-formed pointer starts with, per prefix ("": either half of the namespace).
# ``key_from_pointer`` and ``pointer_problem`` (every job) read ``check_payload_key``'s
# common case on the pointer itself, without a slice or a call: the scheme and the prefix
# have no white space or line break, so the key has one exactly where the pointer has, and
# its start is "ctx:"/"res:" (only its end can be white space).
_POINTER_STARTS: dict[str, str | tuple[str, ...]] = {
    prefix: POINTER_SCHEME + prefix for prefix in PAYLOAD_PREFIXES}
_POINTER_STARTS[""] = tuple(POINTER_SCHEME + prefix for prefix in PAYLOAD_PREFIXES)
_SCHEME_LENGTH = len(POINTER_SCHEME)
_SHORTEST_POINTER = _SCHEME_LENGTH + 4
_NO_START = "\x00"  # what no well-formed pointer starts with (for an unknown prefix)


def check_payload_key(key: str, prefix: str = "", *, pointer: str = "") -> str:
    """``key`` if it is a key of the payload namespace (with ``prefix``: of that half of it,
    ``ctx:`` or ``res:``); else ``PayloadPointerError`` naming ``pointer`` (or the key)."""
    # The common case in a few C-level calls, without a call of its own: it runs on every
    # payload write.
    if (key.__class__ is str and len(key) > 4
            and key.startswith(prefix or PAYLOAD_PREFIXES)
            and key.strip() == key
            and "\n" not in key and "\r" not in key and "\x00" not in key):  # no line breaks, NUL
        return key
    shown = pointer or key
    if not isinstance(key, str):
        raise PayloadPointerError(f"payload key {shown!r}: expected a string")
    allowed = (prefix,) if prefix else PAYLOAD_PREFIXES
    if not key.startswith(allowed) or key in allowed:
        names = " or ".join(p + "<job>" for p in allowed)
        raise PayloadPointerError(
            f"payload pointer {shown!r} refused: outside the payload namespace "
            f"(expected {names}); nothing was read")
    raise PayloadPointerError(f"payload pointer {shown!r} refused: malformed key")


def key_from_pointer(ptr: str, prefix: str = "") -> str:
    """Payload key named by a pointer (``redis://ctx:<job>``, ``redis://res:<job>`` or the
    bare key). Raises ``PayloadPointerError`` (a ``ValueError``) naming the pointer if it is
    malformed or outside the payload namespace (``check_payload_key``)."""
    if (ptr.__class__ is str and len(ptr) > _SHORTEST_POINTER
            and ptr.startswith(_POINTER_STARTS.get(prefix, _NO_START))
            and not ptr[-1].isspace()  # ``key.strip() == key``
            and "\n" not in ptr and "\r" not in ptr and "\x00" not in ptr):
        return ptr[_SCHEME_LENGTH:]  # the common case: a pointer the engine made
    if not isinstance(ptr, str) or not ptr:
        raise PayloadPointerError(f"bad payload pointer {ptr!r}: expected {POINTER_SCHEME}<key>")
    key = ptr[_SCHEME_LENGTH:] if ptr.startswith(POINTER_SCHEME) else ptr
    return check_payload_key(key, prefix, pointer=ptr)


def context_key_at(ptr: str) -> str:
    """``check_payload_key(key_from_pointer(ptr), CONTEXT_PREFIX)``, the key of a job
    input's pointer, checked once (a worker reads one per job): the same key, and the
    same errors, as the two calls."""
    try:
        return key_from_pointer(ptr, CONTEXT_PREFIX)
    except PayloadPointerError:  # (the two calls, for their own error)
        return check_payload_key(key_from_pointer(ptr), CONTEXT_PREFIX)


def pointer_problem(ptr: str, prefix: str = "") -> str:
    """Why ``ptr`` is refused (``key_from_pointer``'s message), or ``""`` when it is fine."""
    if (ptr.__class__ is str and len(ptr) > _SHORTEST_POINTER
            and ptr.startswith(_POINTER_STARTS.get(prefix, _NO_START))
            and not ptr[-1].isspace()
            and "\n" not in ptr and "\r" not in ptr and "\x00" not in ptr):
        return ""  # the common case (every job result), without raising and catching
    try:
        key_from_pointer(ptr, prefix)
    except PayloadPointerError as exc:
        return str(exc)
    return ""


__all__ = [
    "CONTEXT_PREFIX",
    "PAYLOAD_PREFIXES",
    "POINTER_SCHEME",
    "RESULT_PREFIX",
    "check_payload_key",
    "context_key",
    "context_key_at",
    "key_from_pointer",
    "pointer_for_key",
    "pointer_problem",
    "result_key",
]
