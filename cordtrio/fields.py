"""Field codecs of the documents in ``model``: the checks and conversions ``from_dict`` and
``to_dict`` apply to each field, and the fast copy and timestamp helpers they share.

Split from ``model`` (which owns the document classes) because these run on every store
read and write: they are written for speed (fast paths for the usual types, error messages
built only when an error is raised, small bounded caches for timestamps).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import ValidationError
from .timeutil import format_ts, parse_ts


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (dicts, lists, scalars), several times faster than
    ``copy.deepcopy``, which documents are copied with on every store read and write.

    Anything else (tuples, sets, custom objects a caller slipped into ``input``) falls back to
    ``copy.deepcopy``. Unlike ``deepcopy`` it does not preserve shared references inside the
    value, which JSON documents cannot express anyway.
    """
    cls = type(value)
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    if cls is dict:
        return {k: json_copy(v) for k, v in value.items()} if value else {}
    if cls is list:
        return [json_copy(v) for v in value] if value else []
    return copy.deepcopy(value)


RECENT_TS_TEXTS: dict[datetime, str] = {}
"""The texts ``timestamp_text`` made last, for hot writers to look up first (a hit is one
``dict.get``, not a call): ``RECENT_TS_TEXTS.get(ts) or new_timestamp_text(ts)``. Read it,
never write it; the dict is never replaced, only emptied."""
_TS_OLD: dict[datetime, str] = {}  # the previous generation: hot entries survive a flip
_TS_CACHE_MAX = 2048
"""Entries per generation: both full hold ~650 KB. Bounded memory matters (W4), but so do
hits: W1 on Redis with 500 runs in flight stamps each run's created/started times again
only after ~1,500 other texts; at 512 per generation most of those were made again (about
30k instructions per engine step)."""


def timestamp_text(value: datetime | None) -> str | None:
    """``format_ts``, cached: a run's header repeats the same timestamps (created, started)
    on every write, and one event stamps several fields with the same ``now``. (A datetime
    hashes in C and caches its hash; ``isoformat`` costs twenty times more.)"""
    if value is None:
        return None
    text = RECENT_TS_TEXTS.get(value)
    return text if text is not None else new_timestamp_text(value)


def new_timestamp_text(value: datetime) -> str:
    """``timestamp_text`` of a timestamp ``RECENT_TS_TEXTS`` does not hold, kept there: for
    hot writers, which look there first themselves (a step's write stamps a new ``now``;
    its miss is not looked up twice)."""
    text = _TS_OLD.get(value)
    if text is None:
        if value.tzinfo is UTC:
            text = value.isoformat()[:-6] + "Z"  # "+00:00" -> "Z"
        else:
            text = format_ts(value)
            assert text is not None
    if len(RECENT_TS_TEXTS) >= _TS_CACHE_MAX:
        _TS_OLD.clear()
        _TS_OLD.update(RECENT_TS_TEXTS)
        RECENT_TS_TEXTS.clear()
    RECENT_TS_TEXTS[value] = text
    return text


Where = str | tuple[str, str]
"""Where a value sits, for error messages: a string, or (document, field) joined with a dot
only when an error is raised (documents are parsed on every store read)."""


def _w(where: Where) -> str:
    return where if isinstance(where, str) else f"{where[0]}.{where[1]}"


def _str_enum(enum: type[StrEnum], value: Any, default: Any, where: Where) -> Any:
    if value is None or value == "":
        return default
    if type(value) is str:
        member = enum._value2member_map_.get(value)  # the stored spelling: no re-parse
        if member is not None:
            return member
    try:
        return enum(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(member.value for member in enum)
        raise ValidationError(
            f"{_w(where)}: unknown {enum.__name__} {value!r} (expected one of: {valid})"
        ) from None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is empty (Go's omitempty)."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return
    if isinstance(value, (dict, list)) and not value:
        return
    out[key] = value


def _dict(value: Any, where: Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{_w(where)}: expected an object, got {type(value).__name__}")
    return value


def _list_of_str(value: Any, where: Where) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValidationError(f"{_w(where)}: expected a list, got {type(value).__name__}")
    return [str(v) for v in value]


def _num(value: Any, where: Where) -> float | int:
    cls = type(value)
    if cls is int or cls is float:
        return value  # type: ignore[no-any-return]
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value) if "." in str(value) else int(str(value))
        except (TypeError, ValueError):
            raise ValidationError(f"{_w(where)}: expected a number, got {value!r}") from None
    return value


_PARSED: dict[str, datetime] = {}
_PARSED_MAX = 1024


def _ts(value: Any, where: Where) -> datetime | None:
    if value is None or value == "":
        return None
    if type(value) is str:
        parsed = _PARSED.get(value)  # datetimes are immutable: safe to share
        if parsed is not None:
            return parsed
    try:
        parsed = parse_ts(value, field=_w(where))
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if type(value) is str and parsed is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[value] = parsed
    return parsed
