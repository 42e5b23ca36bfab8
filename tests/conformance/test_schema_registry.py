"""The schema registry port (API.md "Schema registry"), run against every storage backend."""

from __future__ import annotations

from typing import Any

import pytest

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.ports import SchemaRegistry

POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
    "required": ["x"],
}


async def test_backend_implements_the_schema_registry_protocol(schemas: SchemaRegistry) -> None:
    assert isinstance(schemas, SchemaRegistry)


async def test_registered_schema_reads_back_equal(schemas: SchemaRegistry) -> None:
    await schemas.register("point", POINT)
    assert await schemas.get("point") == POINT


async def test_register_replaces_an_existing_schema(schemas: SchemaRegistry) -> None:
    await schemas.register("s", {"type": "string"})
    await schemas.register("s", {"type": "integer"})
    assert await schemas.get("s") == {"type": "integer"}
    await schemas.validate("s", 3)


async def test_schemas_are_copied_in_and_out(schemas: SchemaRegistry) -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"x": {"type": "integer"}}}
    await schemas.register("s", schema)
    schema["properties"]["x"]["type"] = "string"
    got = await schemas.get("s")
    assert got["properties"]["x"] == {"type": "integer"}
    got["type"] = "array"
    assert (await schemas.get("s"))["type"] == "object"
    with pytest.raises(ValidationError):
        await schemas.validate("s", {"x": "a string"})


async def test_an_invalid_schema_is_refused_naming_its_id(schemas: SchemaRegistry) -> None:
    with pytest.raises(ValidationError, match=r"schema 'bad'.*invalid schema"):
        await schemas.register("bad", {"type": "no-such-type"})
    with pytest.raises(ValidationError, match="invalid schema"):
        await schemas.register("bad", {"properties": {"x": {"minimum": "zero"}}})
    with pytest.raises(ValidationError, match="bad"):
        await schemas.register("bad", ["not", "a", "schema"])  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        await schemas.get("bad")


async def test_missing_schema_raises_not_found_naming_the_id(schemas: SchemaRegistry) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        await schemas.get("nope")
    with pytest.raises(NotFoundError, match="nope"):
        await schemas.validate("nope", {})


async def test_validate_accepts_a_conforming_value(schemas: SchemaRegistry) -> None:
    await schemas.register("point", POINT)
    await schemas.validate("point", {"x": 1, "y": 2})
    await schemas.validate("point", {"x": 1, "extra": "ok"})


async def test_validate_names_the_schema_and_the_json_path(schemas: SchemaRegistry) -> None:
    await schemas.register("point", POINT)
    with pytest.raises(ValidationError) as info:
        await schemas.validate("point", {"x": 1, "y": "two"})
    assert str(info.value) == "schema 'point': $.y: 'two' is not of type 'integer'"
    with pytest.raises(ValidationError, match=r"schema 'point': \$: 'x' is a required property"):
        await schemas.validate("point", {"y": 2})


async def test_list_returns_sorted_ids_up_to_the_limit(schemas: SchemaRegistry) -> None:
    assert await schemas.list() == []
    for sid in ("c", "a", "b"):
        await schemas.register(sid, {"type": "object"})
    assert await schemas.list() == ["a", "b", "c"]
    assert await schemas.list(limit=2) == ["a", "b"]


async def test_delete_removes_a_schema(schemas: SchemaRegistry) -> None:
    await schemas.register("a", POINT)
    await schemas.register("b", POINT)
    await schemas.delete("a")
    await schemas.delete("a")  # deleting again is fine
    assert await schemas.list() == ["b"]
    with pytest.raises(NotFoundError):
        await schemas.get("a")
