"""Redis schema registry: each schema as JSON at ``schema:<id>``, ids in the set
``schema:index`` (SPEC §11). Values are validated with ``cordtrio.schemas.validate_value``."""

from __future__ import annotations

import json
from typing import Any

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.schemas import check_schema, validate_value

from .adapter import RedisAdapter
from .redis_errors import RedisDataError

DEFAULT_LIST_LIMIT = 100
SCHEMA_INDEX = "schema:index"


def schema_key(schema_id: str) -> str:
    return "schema:" + schema_id


class RedisSchemaRegistry:
    """Schemas are checked on ``register``; every ``get``/``validate`` reads Redis, so all
    engines sharing the server see a registration at once."""

    def __init__(self, redis: RedisAdapter) -> None:
        self._redis = redis

    async def register(self, schema_id: str, schema: dict[str, Any]) -> None:
        """Add or replace a schema. Raises ``ValidationError`` if it is not valid JSON Schema."""
        if not schema_id:
            raise ValidationError("schema id required")
        if schema_id == "index":
            raise ValidationError("schema 'index': id not allowed (key schema:index is the index)")
        if not isinstance(schema, dict):
            raise ValidationError(
                f"schema {schema_id!r}: invalid schema: expected an object, "
                f"got {type(schema).__name__}"
            )
        check_schema(schema, f"schema {schema_id!r}")
        try:
            raw = json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"schema {schema_id!r}: invalid schema: not JSON: {exc}"
                                  ) from None
        key = schema_key(schema_id)
        await self._redis.pipeline(
            "register schema", key, [("set", (key, raw)), ("sadd", (SCHEMA_INDEX, schema_id))]
        )

    async def get(self, schema_id: str) -> dict[str, Any]:
        return await self._lookup(schema_id)

    async def delete(self, schema_id: str) -> None:
        """Remove a schema; deleting a missing id is not an error."""
        key = schema_key(schema_id)
        await self._redis.pipeline(
            "delete schema", key, [("delete", (key,)), ("srem", (SCHEMA_INDEX, schema_id))]
        )

    async def list(self, limit: int = DEFAULT_LIST_LIMIT) -> list[str]:
        """Registered ids in sorted order, at most ``limit`` (``<= 0``: the default)."""
        limit = limit if limit > 0 else DEFAULT_LIST_LIMIT
        ids = await self._redis.call("list schemas", SCHEMA_INDEX, "smembers", SCHEMA_INDEX)
        return sorted(x.decode() if isinstance(x, bytes) else str(x) for x in ids)[:limit]

    async def validate(self, schema_id: str, value: Any) -> None:
        """Raise ``NotFoundError`` for an unknown id, ``ValidationError`` naming the schema id
        and the JSON path for a value that does not conform."""
        schema = await self._lookup(schema_id)
        validate_value(schema, value, where=f"schema {schema_id!r}")

    async def _lookup(self, schema_id: str) -> dict[str, Any]:
        key = schema_key(schema_id)
        raw = await self._redis.call("get schema", key, "get", key)
        if raw is None:
            raise NotFoundError(f"schema {schema_id!r} not found")
        try:
            schema = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RedisDataError(f"redis key {key!r}: corrupt JSON ({exc})") from None
        if not isinstance(schema, dict):
            raise RedisDataError(f"redis key {key!r}: schema is not a JSON object")
        return schema


__all__ = ["SCHEMA_INDEX", "RedisSchemaRegistry", "schema_key"]
