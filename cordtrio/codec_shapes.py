"""The packet codec's short ways, per *shape*: the classes of a payload's field values.

``protocol._compile`` generates, per payload class, an encoder and a decoder that test
every field in turn. Most packets of one kind have one shape (a job request's fields are a
few strings, two maps, an enum and ``None``s; a result's a few strings, an enum and an
int), and what a field's tests conclude depends on its value's class alone, except for
what is inside a map, a list or a nested document. So the codec learns, per class and per
shape it meets (``MAX_SHAPES`` at most), what is left to do for that shape, and does only
that the next time, with C calls over all the fields at once:

* encoding (``EncodeShape``): which fields go on the wire, from each value's truth and
  the fields whose class keeps them even when empty (``bool``, every ``IntEnum``), and
  which are nested documents to encode in their place;
* decoding (``decode_shape``): straight-line code for that shape alone: enum numbers to
  members, default factories for absent maps and lists, the string checks of maps and
  lists, nested documents; every other field's value has its kind's class already.

A shape with a class the rules do not settle this way (a ``str`` subclass, a ``bool`` in
an enum field, a map where a nested document goes...) is never learnt: its values take the
field-by-field way every time. tests/test_protocol_paths.py compares both ways with the
plain rules, for any value in any field.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

MAX_SHAPES = 64
"""Shapes kept per payload class (a few in practice): past it, they are forgotten and
learnt again as they come (odd values met first do not keep the usual shapes out)."""

_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})
_NONE = type(None)
_FIELD_CLASSES: dict[str, frozenset[type]] = {
    "str": frozenset({str}), "int": frozenset({int}), "bool": frozenset({bool}),
    "number": frozenset({int, float}),
}
"""The classes a decoded value of a plain kind may have (``protocol._USUAL``)."""


def _is_enum(c: type) -> bool:
    return c not in _PLAIN and isinstance(c, type) and issubclass(c, IntEnum)


EncodeShape = tuple[tuple[bool, ...], tuple[tuple[str, Any], ...]]
"""What encoding a value of a learnt shape takes: per field, whether it is kept even when
empty; and the nested documents present (field name, class), encoded in their place."""


def learn_encode(key: tuple[type, ...], names: tuple[str, ...], nested: dict[str, type]
                 ) -> EncodeShape | tuple[()]:
    """The encoding of the values of shape ``key`` (``nested``: the fields that hold a
    nested document, and its class); ``()`` for a shape that must go field by field. A
    value goes on the wire when it is truthy, ``False`` or an ``IntEnum``: by its class
    alone for these classes."""
    keep: list[bool] = []
    documents: list[tuple[str, Any]] = []
    for name, c in zip(names, key, strict=True):
        doc = nested.get(name)
        if doc is not None:
            if c is doc:  # (a document is always true: kept, then encoded in its place)
                documents.append((name, doc))
            elif c is not _NONE:  # anything else: the field-by-field way raises for it
                return ()
            keep.append(False)
        elif c in _PLAIN:
            keep.append(c is bool)
        elif _is_enum(c):
            keep.append(True)
        else:
            return ()  # truth of an unknown class may be anything, or raise
    return tuple(keep), tuple(documents)


def decode_shape(cls: type, names: tuple[str, ...], kinds: dict[str, Any],
                 factories: dict[str, Callable[[], Any]], defaults: dict[str, Any],
                 key: tuple[type, ...], env: dict[str, Any]
                 ) -> Callable[[tuple[Any, ...], Any, str], Any] | None:
    """The decoder of the maps whose values (each field's, or its default: ``defaults``,
    a marker object for the fields made by ``factories``) have the classes ``key``; None
    for a shape with a value the field-by-field way would refuse or convert otherwise.
    It returns the document, or hands the map to ``_walk`` (``env``) where the contents
    of a map, a list or a nested document decide."""
    unpacked = "".join(f"v{i}, " for i in range(len(names)))
    lines = ["def shape(vals, data, where):", f" ({unpacked}) = vals"]
    local: dict[str, Any] = {**env, "_ONLY_STR": frozenset({str}), "_map": map,
                             "_type": type}
    for i, (name, c) in enumerate(zip(names, key, strict=True)):
        kind, arg = kinds[name], f"v{i}"
        if name in factories and c is object:  # absent (the marker): a new map or list
            local[f"new{i}"] = factories[name]
            lines.append(f" {arg} = new{i}()")
        elif kind.__class__ is dict:  # an enum's members by number
            if c is int:
                local[f"m{i}"] = kind
                lines.append(f" {arg} = m{i}.get({arg}, {arg})")
            elif c is not type(defaults[name]) or c in _PLAIN:
                return None  # (its default's own class: absent, the default kept)
        elif kind.__class__ is not str:  # a nested document (its default: None)
            if c is dict:
                local[f"k{i}"] = kind
                lines += [f" try: {arg} = _from_plain(k{i}, {arg}, where + {'.' + name!r})",
                          " except ProtocolError: return _walk(cls, data, where)"]
            elif c is not _NONE:
                return None
        elif kind == "str_map":
            if c is not dict:
                return None
            # ``_is_str_map``'s C passes first (decoded CBOR text is exactly ``str``)
            lines.append(f" if not (_ONLY_STR.issuperset(_map(_type, {arg})) and "
                         f"_ONLY_STR.issuperset(_map(_type, {arg}.values()))) "
                         f"and not _is_str_map({arg}): return _walk(cls, data, where)")
        elif kind == "str_list":
            if c is not list:
                return None
            lines.append(f" if not _is_str_list({arg}): return _walk(cls, data, where)")
        elif kind != "any" and c not in _FIELD_CLASSES[kind]:
            return None
    if len(lines) == 2:
        lines[1:] = [" return cls(*vals)"]
    else:
        lines.append(f" return cls({', '.join(f'v{i}' for i in range(len(names)))})")
    exec(compile("\n".join(lines), f"<cordtrio.protocol codec of {cls.__name__}, a shape>",
                 "exec"), local)
    return local["shape"]  # type: ignore[no-any-return]


__all__ = ["MAX_SHAPES", "EncodeShape", "decode_shape", "learn_encode"]
