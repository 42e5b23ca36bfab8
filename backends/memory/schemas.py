"""In-memory schema registry: JSON Schemas by id (``input_schema_id``/``output_schema_id``)."""

from __future__ import annotations

import copy
from typing import Any

import trio

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.schemas import check_schema, validate_value

DEFAULT_LIST_LIMIT = 100


class MemorySchemaRegistry:
    """Schemas are checked on ``register`` and stored as private copies."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, Any]] = {}

    async def register(self, schema_id: str, schema: dict[str, Any]) -> None:
        """Add or replace a schema. Raises ``ValidationError`` if it is not valid JSON Schema."""
        await trio.lowlevel.checkpoint()
        if not schema_id:
            raise ValidationError("schema id required")
        if not isinstance(schema, dict):
            raise ValidationError(
                f"schema {schema_id!r}: invalid schema: expected an object, "
                f"got {type(schema).__name__}"
            )
        check_schema(schema, f"schema {schema_id!r}")
        self._schemas[schema_id] = copy.deepcopy(schema)

    async def get(self, schema_id: str) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return copy.deepcopy(self._lookup(schema_id))

    async def delete(self, schema_id: str) -> None:
        """Remove a schema; deleting a missing id is not an error."""
        await trio.lowlevel.checkpoint()
        self._schemas.pop(schema_id, None)

    async def list(self, limit: int = DEFAULT_LIST_LIMIT) -> list[str]:
        """Registered ids in sorted order, at most ``limit`` (``<= 0``: the default)."""
        await trio.lowlevel.checkpoint()
        limit = limit if limit > 0 else DEFAULT_LIST_LIMIT
        return sorted(self._schemas)[:limit]

    async def validate(self, schema_id: str, value: Any) -> None:
        """Raise ``NotFoundError`` for an unknown id, ``ValidationError`` naming the schema id
        and the JSON path for a value that does not conform."""
        await trio.lowlevel.checkpoint()
        validate_value(self._lookup(schema_id), value, where=f"schema {schema_id!r}")

    def _lookup(self, schema_id: str) -> dict[str, Any]:
        schema = self._schemas.get(schema_id)
        if schema is None:
            raise NotFoundError(f"schema {schema_id!r} not found")
        return schema


__all__ = ["MemorySchemaRegistry"]
