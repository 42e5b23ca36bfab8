"""A run as a Redis hash: encoding the parts a change names, and reassembling a run.

One field per part (``header``, ``input``, ``step:<id>``, ``child:<parent>:<child>``,
``ctx:<key>``, ``ctxstep:<key>``) plus ``ord:<field>`` ranks that keep insertion order
(Redis does not keep field order in large hashes). See ``store.py`` for the layout.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Iterable
from typing import Any

from cordtrio.errors import ValidationError
from cordtrio.model import StepRun, WorkflowRun

from .keys import CHILD, CTX, CTXSTEP, HEADER, INPUT, ORD, STEP, child_prefix, unescape
from .redis_errors import RedisDataError


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_MARKERS: dict[int, Any] = {}
_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    _MARKERS, _unserialisable, json.encoder.encode_basestring,  # type: ignore[attr-defined]
    None, ":", ",", False, False, True)
"""The C encoder ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` builds on
every call, made once (same bytes: tested): the run write encodes several fields and
timeline events per step, and building the encoder was a third of each encode. Its
circular-reference ``_MARKERS`` are empty between calls (cleared if an encode fails)."""
if _ENCODE is None:  # pragma: no cover - CPython always has the C accelerator
    _ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).iterencode


Where = str | tuple[Any, ...]
"""Where a value goes, for the error of one that cannot be encoded: a string, or a format
string and its arguments, formatted only then (every step encodes several values)."""


def encode_value(value: Any) -> str:
    """The JSON text of ``value`` as ``dumps`` writes it (its errors raised as they are)."""
    try:
        return "".join(_ENCODE(value, 0))
    except BaseException:
        _MARKERS.clear()
        raise


def dumps(value: Any, where: Where) -> bytes:
    try:
        return "".join(_ENCODE(value, 0)).encode()
    except (TypeError, ValueError) as exc:
        _MARKERS.clear()
        place = where if isinstance(where, str) else where[0].format(*where[1:])
        raise ValidationError(f"{place}: not JSON-serialisable: {exc}") from None
    except BaseException:
        _MARKERS.clear()
        raise


_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
"""``json.loads``'s own scanner: a stored field is UTF-8 JSON with nothing around it, so
``loads`` scans it directly, without ``json.loads``'s per-call encoding detection and
whitespace passes (a run read decodes every field); anything else takes ``json.loads``."""


def loads(raw: bytes, key: str, field: str = "") -> Any:
    if type(raw) is bytes:
        try:
            doc = raw.decode()
            value, end = _SCAN(doc, 0)
            if end == len(doc):
                return value
        except (StopIteration, ValueError, RecursionError):
            pass  # not the plain case: json.loads decides (and names the error)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f"redis key {key!r}" + (f" field {field!r}" if field else "")
        raise RedisDataError(f"{where}: corrupt JSON ({exc})") from None


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes | bytearray) else str(raw)


class FieldOps:
    """The field writes and deletions one change makes to a run hash, last one wins.

    ``drop_prefix`` removes every stored field with a prefix (a step's children, the
    ``context["steps"]`` entries); resolving it needs the stored field names. ``fresh``
    fields were dropped and written again, so they get a new rank (at the end).
    """

    def __init__(self) -> None:
        self.writes: dict[str, bytes] = {}
        self.deletes: set[str] = set()
        self.prefixes: list[str] = []
        self.fresh: set[str] = set()

    def put(self, field: str, value: bytes) -> None:
        if field in self.deletes or (
                self.prefixes and any(field.startswith(p) for p in self.prefixes)):
            self.deletes.discard(field)
            self.fresh.add(field)
        self.writes[field] = value

    def drop(self, field: str) -> None:
        self.writes.pop(field, None)
        self.fresh.discard(field)
        self.deletes.add(field)

    def drop_prefix(self, prefix: str) -> None:
        for field in [f for f in self.writes if f.startswith(prefix)]:
            del self.writes[field]
            self.fresh.discard(field)
        self.prefixes.append(prefix)

    def resolve(self, stored: Iterable[str]) -> None:
        """Turn prefix drops into field deletions, given the fields stored now."""
        for field in stored:
            if field.startswith(ORD) or field in self.writes:
                continue
            if any(field.startswith(p) for p in self.prefixes):
                self.deletes.add(field)
        self.prefixes = []


def ordered(keys: Iterable[str], order: Iterable[str]) -> list[str]:
    """``keys`` in the order they appear in ``order`` (then the ones absent from it)."""
    wanted = keys if type(keys) is set else set(keys)
    if len(wanted) <= 1:
        return list(wanted)
    out = list(filter(wanted.__contains__, order))  # no Python-level step per key
    if len(out) < len(wanted):
        seen = set(out)
        out.extend(sorted(k for k in wanted if k not in seen))
    return out


LAST = 1 << 80  # rank of a field without one: after the others
_ORD_KIND, _STEP_KIND, _CHILD_KIND, _CTXSTEP_KIND, _CTX_KIND = (
    p[:-1] for p in (ORD, STEP, CHILD, CTXSTEP, CTX))
"""The field-name prefixes without their ":" (what ``str.partition`` gives)."""


def field_names(raw_fields: dict[Any, Any]) -> dict[str, Any]:
    """The fields of a run hash as Redis returns them, keyed by their names as text."""
    return {k.decode() if type(k) is bytes else text(k): v for k, v in raw_fields.items()}


def assemble(key: str, raw_fields: dict[Any, Any]) -> WorkflowRun:
    """A ``WorkflowRun`` from the fields of its hash (see the module docstring)."""
    return assemble_named(key, field_names(raw_fields))


def assemble_named(key: str, fields: dict[str, Any]) -> WorkflowRun:
    """``assemble`` of fields keyed by name (``field_names``).

    The run is ``WorkflowRun.from_dict`` of the header and input; its context and steps are
    put in afterwards, as ``from_dict`` would build them but without copying the context:
    every value here was just decoded, and so belongs to this run alone."""
    header_raw = fields.get(HEADER)
    if header_raw is None:
        raise RedisDataError(f"redis key {key!r}: run has no {HEADER!r} field")
    header = loads(header_raw, key, HEADER)
    if not isinstance(header, dict):
        raise RedisDataError(f"redis key {key!r} field {HEADER!r}: not a JSON object")
    steps: list[str] = []
    children: dict[str, list[str]] = {}
    ctx_keys: list[str] = []
    ctx_steps: list[str] = []
    # one pass: every field is a rank, a step, a child, a context entry or ignored (a
    # prefix is the name up to its first ":"; ranks are read only for groups to sort)
    for name in fields:
        kind, colon, _ = name.partition(":")
        if kind == _ORD_KIND or not colon:
            continue
        if kind == _STEP_KIND:
            steps.append(name)
        elif kind == _CTXSTEP_KIND:
            ctx_steps.append(name)
        elif kind == _CTX_KIND:
            ctx_keys.append(name)
        elif kind == _CHILD_KIND:
            parent = unescape(name[len(CHILD):].split(":", 1)[0])
            children.setdefault(parent, []).append(name)

    def rank(name: str) -> tuple[int, str]:
        raw = fields.get(ORD + name)
        if raw is not None:
            try:
                return int(raw), name
            except ValueError:  # a corrupt rank: the field sorts last
                pass
        return LAST, name

    def by_rank(names: list[str]) -> list[str]:
        if len(names) <= 1:
            return names
        return sorted(names, key=rank)

    doc = dict(header)
    if INPUT in fields:
        doc["input"] = loads(fields[INPUT], key, INPUT)
    doc["context"] = doc["steps"] = {}  # put in below
    context: dict[str, Any] = {}
    steps_map: dict[str, Any] | None = None
    for name in by_rank(ctx_keys):
        value = loads(fields[name], key, name)
        ck = name[len(CTX):]
        if ck == "steps" and isinstance(value, dict):
            steps_map = value
        else:
            context[ck] = value
    if steps_map is not None:
        for name in by_rank(ctx_steps):
            steps_map[name[len(CTXSTEP):]] = loads(fields[name], key, name)
        context["steps"] = steps_map
    run_steps: dict[str, StepRun] = {}
    try:
        run = WorkflowRun.from_dict(doc)
        for name in by_rank(steps):
            sid = name[len(STEP):]
            sd = loads(fields[name], key, name)
            kids = children.get(sid)
            if kids and isinstance(sd, dict):
                prefix = child_prefix(sid)
                sd["children"] = {
                    n[len(prefix):]: loads(fields[n], key, n) for n in by_rank(kids)
                }
            run_steps[sid] = StepRun.from_dict(sd, sid)
    except ValidationError as exc:
        raise RedisDataError(f"redis key {key!r}: corrupt run: {exc}") from None
    run.context = context
    run.steps = run_steps
    return run
