"""Payload dataclasses to wire maps and back: the packet codec's per-class code.

``protocol`` registers which fields hold a nested document and which an ``IntEnum``
(``register_fields``); every other field's kind comes from its default. For each payload
class met, the codec generates once a straight-line encoder and decoder of its fields
(``_compile``), put behind the short ways of the shapes met before (``codec_shapes``);
a map the generated decoder does not take as it is goes to ``_walk``, field by field,
which raises ``ProtocolError`` for the first bad value. tests/test_protocol_paths.py
compares the generated code with the plain rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any

from .codec_shapes import by_shape
from .errors import ProtocolError

_NESTED: dict[tuple[type, str], type] = {}
"""(class, field) -> the class of the nested document the field holds."""
_ENUMS: dict[tuple[type, str], type[IntEnum]] = {}
"""(class, field) -> the ``IntEnum`` the field holds."""
_ENUM_MEMBERS: dict[type[IntEnum], dict[int, IntEnum]] = {}
"""A wire number's member per enum (a dict lookup: calling the enum runs Python code)."""


def register_fields(nested: dict[tuple[type, str], type],
                    enums: dict[tuple[type, str], type[IntEnum]]) -> None:
    """The fields of the payload classes (and of their nested documents) that hold a
    nested document or an enum; before any of those classes is encoded or decoded."""
    _NESTED.update(nested)
    _ENUMS.update(enums)
    for enum in enums.values():
        _ENUM_MEMBERS[enum] = {member.value: member for member in enum}


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list})
"""Classes no ``IntEnum`` is an instance of: a value of one is kept only when truthy."""
_ONLY_STR = frozenset({str})

# What decoding checks a field's value against (``_Plan.kinds``): one of these, the
# members of the field's ``IntEnum`` by number (a dict) or its nested class. Compared by
# identity.
_STR, _INT, _NUMBER, _BOOL, _STR_MAP, _STR_LIST, _ANY = (
    "str", "int", "number", "bool", "str_map", "str_list", "any")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the fields of one payload class go on the wire and come back, derived once per
    class from its dataclass fields (not per packet: the engine and a worker each encode
    and decode packets on every step)."""

    kinds: dict[str, Any]  # field name -> what its decoded value is checked against
    encode: Callable[[Any], dict[str, Any]]  # ``_to_plain`` of this class
    decode: Callable[[Any, str], Any]  # ``_from_plain`` of this class


_PLANS: dict[type, _Plan] = {}


def payload_plan(cls: type) -> _Plan:
    """The plan of ``cls`` (a payload class or a nested document's), made once."""
    plan = _PLANS.get(cls)
    if plan is None:
        kinds: dict[str, Any] = {}
        for f in fields(cls):
            kind: Any = _NESTED.get((cls, f.name))
            enum = _ENUMS.get((cls, f.name))
            if enum is not None:
                kind = _ENUM_MEMBERS[enum]
            elif kind is None:
                default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
                if isinstance(default, bool):
                    kind = _BOOL
                elif isinstance(default, (int, float)):
                    # annotations are strings here; 1.5 is no step_index
                    kind = _INT if f.type == "int" else _NUMBER
                elif isinstance(default, str):
                    kind = _STR
                elif isinstance(default, dict):
                    kind = _STR_MAP
                elif isinstance(default, list):
                    kind = _STR_LIST
                else:
                    kind = _ANY
            kinds[f.name] = kind
        plan = _PLANS[cls] = _Plan(kinds, *_compile(cls, kinds))
    return plan


# The checks of a decoded value ``v`` of each kind that ``_walk`` makes, for the classes
# cbor2 decodes to (anything else goes to ``_walk``).
_USUAL: dict[str, str] = {
    _STR: "v.__class__ is str", _INT: "v.__class__ is int", _BOOL: "v.__class__ is bool",
    _NUMBER: "(v.__class__ is float or v.__class__ is int)",
    _STR_MAP: "v.__class__ is dict and _is_str_map(v)",
    _STR_LIST: "v.__class__ is list and _is_str_list(v)",
}


_KEEP_EMPTY = "v is False or (v.__class__ not in _PLAIN_TYPES and isinstance(v, IntEnum))"
"""When an empty (falsy) value still goes on the wire: ``False`` and every ``IntEnum``."""
_EMPTY_CLASS: dict[str, str] = {_STR: "str", _INT: "int", _NUMBER: "int", _STR_MAP: "dict",
                                _STR_LIST: "list"}
"""The class of a field's usual empty value, by kind: such a value is dropped at once."""


def _at(expr: str, arg: str) -> str:
    """``expr`` (a test of a value ``v``) of the variable ``arg``."""
    return re.sub(r"\bv\b", arg, expr)


def _usual_empty(cls: type, name: str, kind: Any, env: dict[str, Any], i: int) -> str:
    """The generated encoder's first test of an empty value ``v`` (ending in ``and``, or
    ``""``): one that rules out ``_KEEP_EMPTY`` for the value a field usually holds when
    empty (``""`` for a string, ``None`` for a nested document); an enum field's member
    is kept at once (``e{i}``: its enum)."""
    enum = _ENUMS.get((cls, name))
    if enum is not None:
        env[f"e{i}"] = enum
        return f"v.__class__ is e{i} or "
    if (cls, name) in _NESTED:
        return "v is not None and "
    empty = _EMPTY_CLASS.get(kind) if kind.__class__ is str else None
    return f"v.__class__ is not {empty} and " if empty else ""


def _compile(cls: type, kinds: dict[str, Any]
             ) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any, str], Any]]:
    """Straight-line ``_to_plain`` and ``_from_plain`` for one class, generated once from
    its fields (as ``dataclasses`` generates ``__init__``): a loop over the fields costs
    the engine and a worker more on every packet than the packet's own CBOR.

    Encoding reads every field in one ``attrgetter`` call and writes each in order unless
    it is empty (``False`` and every ``IntEnum`` member are kept: cbor2 writes an
    ``IntEnum`` as its number); an empty value of the class the field's empty value
    usually has (``""``, ``0``, ``None``...) is dropped after one test. Decoding takes
    each field from the map (its default when absent) if its value has the usual class of
    its kind, converting enums and nested documents; at the first value that does not,
    it hands the map to ``_walk``, which goes field by field in the map's order and
    raises for the first bad one: the same packet, or the same error."""
    env: dict[str, Any] = {"cls": cls, "_to_plain": _to_plain, "_from_plain": _from_plain,
                           "_walk": _walk, "_is_str_map": _is_str_map,
                           "_is_str_list": _is_str_list, "_PLAIN_TYPES": _PLAIN_TYPES,
                           "IntEnum": IntEnum, "_MISSING": _MISSING, "ProtocolError": ProtocolError}
    names = [f.name for f in fields(cls)]
    # the fields read in one C call (``attrgetter``), each kept when truthy, else when
    # ``_KEEP_EMPTY`` says so, tested after the class its empty value usually has
    env["_get"] = attrgetter(*names)
    unpacked = "".join(f"v{i}, " for i in range(len(names)))
    enc = ["def encode(obj):", f" ({unpacked}) = _get(obj)" if len(names) > 1
           else " v0 = _get(obj)", " out = {}"]
    dec = ["def decode(data, where):", " if data.__class__ is not dict:",
           "  return _walk(cls, data, where)", " get = data.get"]
    args = []
    for i, f in enumerate(fields(cls)):
        name, kind, arg = f.name, kinds[f.name], f"v{i}"
        value = f"_to_plain({arg})" if (cls, name) in _NESTED else arg
        empty = _at(_usual_empty(cls, name, kind, env, i) + f"({_KEEP_EMPTY})", arg)
        enc += [f" if {arg}: out[{name!r}] = {value}",
                f" elif {empty}: out[{name!r}] = {value}"]
        if callable(f.default_factory):
            # a factory makes a map or list: a nested document or an enum here would be
            # taken as it came (the general walk converts them)
            if kind.__class__ is not str or (cls, name) in _NESTED:
                raise TypeError(f"{cls.__name__}.{name}: a default factory for a nested "
                                "document or an enum is not supported by the codec")
            env[f"new{i}"] = f.default_factory
            dec.append(f" {arg} = get({name!r}, _MISSING)")
            dec.append(f" if {arg} is _MISSING: {arg} = new{i}()")
            if kind in _USUAL:
                dec.append(f" elif not ({_at(_USUAL[kind], arg)}):"
                           " return _walk(cls, data, where)")
        else:
            env[f"d{i}"] = f.default
            dec.append(f" {arg} = get({name!r}, d{i})")
            if kind.__class__ is dict:  # an enum: its members by number
                env[f"m{i}"] = kind
                dec.append(f" if {arg}.__class__ is int: {arg} = m{i}.get({arg}, {arg})")
                dec.append(f" elif {arg} is not d{i}: return _walk(cls, data, where)")
            elif kind.__class__ is str:
                if kind in _USUAL:  # (else _ANY: anything goes); the class first: a
                    # present value usually has it, and so has the default
                    dec.append(f" if not ({_at(_USUAL[kind], arg)}) and {arg} is not d{i}:")
                    dec.append("  return _walk(cls, data, where)")
            else:  # a nested document (its default: None)
                env[f"k{i}"] = kind
                dec += [f" if {arg} is not None:", f"  if {arg}.__class__ is not dict:",
                        "   return _walk(cls, data, where)",
                        f"  try: {arg} = _from_plain(k{i}, {arg}, where + {'.' + name!r})",
                        "  except ProtocolError: return _walk(cls, data, where)"]
        args.append(arg)
    enc.append(" return out")
    dec.append(f" return cls({', '.join(args)})")
    source = "\n".join(enc) + "\n" + "\n".join(dec)
    exec(compile(source, f"<cordtrio.protocol codec of {cls.__name__}>", "exec"), env)
    if len(names) < 2:
        return env["encode"], env["decode"]
    nested = {name: kind for (c, name), kind in _NESTED.items() if c is cls}
    return by_shape(cls, kinds, nested, env, env["encode"], env["decode"])


def _to_plain(obj: Any) -> dict[str, Any]:
    """The wire map of a payload (or nested document): its fields in order, without the
    empty ones (``False`` and every ``IntEnum`` are kept)."""
    return (_PLANS.get(obj.__class__) or payload_plan(obj.__class__)).encode(obj)


def _from_plain(cls: type, data: Any, where: str) -> Any:
    """A payload (or nested document) from its wire map; a value whose type does not match
    its field's default (strings, numbers, maps, lists) or enum raises ``ProtocolError``;
    unknown fields are ignored (forward compatible). See ``_compile``."""
    return (_PLANS.get(cls) or payload_plan(cls)).decode(data, where)


def _unexpected(where: str, name: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where}.{name}: unexpected type {type(value).__name__}")


def _is_str_map(value: Any) -> bool:
    # decoded CBOR text is exactly ``str``: a C pass over the keys and one over the values
    return isinstance(value, dict) and (
        (_ONLY_STR.issuperset(map(type, value))
         and _ONLY_STR.issuperset(map(type, value.values())))
        or all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and (
        _ONLY_STR.issuperset(map(type, value)) or all(isinstance(v, str) for v in value))


def _walk(cls: type, data: Any, where: str) -> Any:
    """``_from_plain`` field by field, in the map's order: the first bad value raises."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(data).__name__}")
    kinds = (_PLANS.get(cls) or payload_plan(cls)).kinds
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = kinds.get(name)
        if kind is None:
            continue  # forward compatible: ignore fields we do not know
        if kind is _STR:
            if value.__class__ is not str and not isinstance(value, str):
                raise _unexpected(where, name, value)
        elif kind is _INT:
            if value.__class__ is not int and (not isinstance(value, int)
                                               or isinstance(value, bool)):
                raise _unexpected(where, name, value)
        elif kind is _STR_MAP:
            if not _is_str_map(value):
                raise _unexpected(where, name, value)
        elif kind is _STR_LIST:
            if not _is_str_list(value):
                raise _unexpected(where, name, value)
        elif kind is _NUMBER:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _unexpected(where, name, value)
        elif kind is _BOOL:
            if not isinstance(value, bool):
                raise _unexpected(where, name, value)
        elif kind.__class__ is dict:  # an enum's members
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError(f"{where}.{name}: expected an integer enum, got {value!r}")
            # an unknown CAP number is kept as it is: the engine reports it
            value = kind.get(value, value)
        elif kind is not _ANY:  # a nested document
            value = None if value is None else _from_plain(kind, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ProtocolError(f"{where}: {exc}") from None


__all__ = ["payload_plan", "register_fields"]
