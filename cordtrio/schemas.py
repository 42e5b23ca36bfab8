"""Inline JSON Schema validation (Draft 2020-12 unless the schema's ``$schema`` says otherwise).

Compiled validators are cached by the schema's canonical JSON text, so validating many values
against the same schema compiles it once. The cached validator is built from a private copy of
the schema: mutating the caller's dict later can never change what a cache entry checks.

Formats (``"format": "email"``) are annotations only, as the 2020-12 default says, and a
``$ref`` is resolved only inside the schema: remote references are never fetched.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from referencing.exceptions import Unresolvable

from .errors import ValidationError

CACHE_SIZE = 512
"""How many distinct compiled schemas are kept (least recently used are dropped)."""

_MAX_MESSAGE = 300


def _canonical(schema: Any, where: str) -> str:
    if not isinstance(schema, (dict, bool)):
        raise ValidationError(
            f"{where}: invalid schema: expected an object, got {type(schema).__name__}"
        )
    try:
        return json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{where}: invalid schema: not JSON: {exc}") from None


@lru_cache(maxsize=CACHE_SIZE)
def _compile(canonical: str) -> Validator:
    """Validator for a schema given as canonical JSON; raises ``SchemaError`` (not cached)."""
    schema = json.loads(canonical)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _validator(schema: dict[str, Any] | bool, where: str) -> Validator:
    canonical = _canonical(schema, where)
    try:
        return _compile(canonical)
    except SchemaError as exc:
        raise ValidationError(
            f"{where}: invalid schema: {exc.json_path}: {_short(exc.message)}"
        ) from None


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def check_schema(schema: dict[str, Any] | bool, where: str) -> None:
    """Raise ``ValidationError`` naming ``where`` unless ``schema`` is a valid JSON Schema."""
    _validator(schema, where)


def validate_value(schema: dict[str, Any] | bool, value: Any, *, where: str) -> None:
    """Raise ``ValidationError`` naming ``where`` and the JSON path of the most relevant
    violation (``step 'resize' input: $.width: 'x' is not of type 'integer'``), or an
    "invalid schema" error if the schema itself is malformed."""
    validator = _validator(schema, where)
    try:
        error = best_match(validator.iter_errors(value))
    except Unresolvable as exc:  # a $ref to nowhere (remote refs are never fetched)
        raise ValidationError(f"{where}: invalid schema: {_short(str(exc))}") from None
    if error is None:
        return
    raise ValidationError(f"{where}: {error.json_path}: {_short(error.message)}")


def clear_cache() -> None:
    """Forget every compiled schema (tests, or after loading many one-off schemas)."""
    _compile.cache_clear()


__all__ = ["CACHE_SIZE", "check_schema", "clear_cache", "validate_value"]
