"""Payload pointers: where job inputs (``ctx:<job>``) and results (``res:<job>``) live."""

from __future__ import annotations

POINTER_SCHEME = "redis://"


def context_key(job_id: str) -> str:
    """Key of a job's input payload."""
    return "ctx:" + job_id


def result_key(job_id: str) -> str:
    """Key of a job's result payload."""
    return "res:" + job_id


def pointer_for_key(key: str) -> str:
    """Pointer (as carried in ``context_ptr``/``result_ptr``) for a payload key."""
    return POINTER_SCHEME + key


def key_from_pointer(ptr: str) -> str:
    """Payload key named by a pointer. Raises ``ValueError`` naming the pointer if malformed."""
    if not isinstance(ptr, str) or not ptr.startswith(POINTER_SCHEME):
        raise ValueError(f"bad payload pointer {ptr!r}: expected {POINTER_SCHEME}<key>")
    key = ptr[len(POINTER_SCHEME):]
    if not key or key.strip() != key or "\n" in key:
        raise ValueError(f"bad payload pointer {ptr!r}: empty or malformed key")
    return key


__all__ = ["context_key", "key_from_pointer", "pointer_for_key", "result_key"]
