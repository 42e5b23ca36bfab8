"""The packet codec's short ways, per *shape*: the classes of a payload's field values.

``codec_fields._compile`` generates, per payload class, an encoder and a decoder that test
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
from dataclasses import fields
from enum import IntEnum
from itertools import compress
from operator import or_, truth
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
"""The classes a decoded value of a plain kind may have (``codec_fields._USUAL``)."""


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


def by_shape(cls: type, kinds: dict[str, Any], nested: dict[str, type],
             env: dict[str, Any],
             encode_fields: Callable[[Any], dict[str, Any]],
             decode_fields: Callable[[Any, str], Any],
             ) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any, str], Any]]:
    """``encode_fields`` and ``decode_fields`` (``_compile``'s field-by-field code) behind
    the short ways of the shapes met before: a value's shape is the tuple of its fields'
    classes, read in one C call. ``nested``: the fields holding a nested document, and
    its class; ``env``: the generated code's names (``_get``, ``_to_plain``, ``_walk``,
    ``_MISSING``...)."""
    names = tuple(f.name for f in fields(cls))
    factories = {f.name: f.default_factory for f in fields(cls)
                 if callable(f.default_factory)}
    missing = env["_MISSING"]
    defaults = {f.name: missing if f.name in factories else f.default for f in fields(cls)}
    eshapes: dict[tuple[type, ...], EncodeShape | tuple[()]] = {}
    dshapes: dict[tuple[type, ...], Callable[[tuple[Any, ...], Any, str], Any]] = {}

    def encode_new(obj: Any, vals: tuple[Any, ...], shape: Any) -> dict[str, Any]:
        if shape is None:  # (a shape not learnt, ``()``, goes field by field every time)
            if len(eshapes) >= MAX_SHAPES:
                eshapes.clear()  # (odd values met first do not keep the usual out)
            key = tuple(map(type, vals))
            eshapes[key] = learn_encode(key, names, nested)
        return encode_fields(obj)

    def decode_new(data: Any, where: str, vals: tuple[Any, ...]) -> Any:
        if len(dshapes) >= MAX_SHAPES:
            dshapes.clear()
        key = tuple(map(type, vals))
        dshapes[key] = decode_shape(cls, names, kinds, factories, defaults, key, env) \
            or (lambda vals, data, where: decode_fields(data, where))
        return decode_fields(data, where)

    local = {"_get": env["_get"], "_eshapes": eshapes, "_dshapes": dshapes,
             "_encode_new": encode_new, "_decode_new": decode_new, "_to_plain": env["_to_plain"],
             "_walk": env["_walk"], "cls": cls, "_names": names,
             "_defaults": tuple(defaults[name] for name in names), "_tuple": tuple,
             "_map": map, "_type": type, "_dict": dict, "_zip": zip, "_compress": compress,
             "_or": or_, "_truth": truth}
    source = "\n".join([
        "def encode(obj):",
        " vals = _get(obj)",
        " shape = _eshapes.get(_tuple(_map(_type, vals)))",
        " if not shape: return _encode_new(obj, vals, shape)",
        " out = _dict(_compress(_zip(_names, vals), _map(_or, _map(_truth, vals), shape[0])))",
        " if shape[1]:",
        "  for name, doc in shape[1]: out[name] = _to_plain(out[name])",
        " return out",
        "def decode(data, where):",
        " if data.__class__ is not dict:",
        "  return _walk(cls, data, where)",
        " vals = _tuple(_map(data.get, _names, _defaults))",
        " shape = _dshapes.get(_tuple(_map(_type, vals)))",
        " if shape is None: return _decode_new(data, where, vals)",
        " return shape(vals, data, where)",
    ])
    exec(compile(source, f"<cordtrio.protocol codec of {cls.__name__}, by shape>", "exec"),
         local)
    local["encode"].shapes = eshapes  # (for tests: the shapes learnt)
    local["decode"].shapes = dshapes
    return local["encode"], local["decode"]


__all__ = ["MAX_SHAPES", "EncodeShape", "by_shape", "decode_shape", "learn_encode"]
