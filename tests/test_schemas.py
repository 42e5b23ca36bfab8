"""Inline JSON Schema validation (cordtrio.schemas)."""

from __future__ import annotations

from typing import Any

import pytest

from cordtrio import schemas
from cordtrio.errors import ValidationError
from cordtrio.schemas import check_schema, validate_value

RESIZE = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1},
        "items": {"type": "array", "items": {
            "type": "object", "properties": {"name": {"type": "string"}}}},
    },
    "required": ["width"],
}


def test_a_conforming_value_passes() -> None:
    validate_value(RESIZE, {"width": 3, "items": [{"name": "a"}]}, where="step 'resize' input")


def test_a_violation_names_where_and_the_json_path() -> None:
    with pytest.raises(ValidationError) as info:
        validate_value(RESIZE, {"width": "x"}, where="step 'resize' input")
    assert str(info.value) == "step 'resize' input: $.width: 'x' is not of type 'integer'"


def test_nested_paths_include_list_indexes() -> None:
    value = {"width": 1, "items": [{"name": "a"}, {"name": 7}]}
    with pytest.raises(ValidationError, match=r"^w: \$\.items\[1\]\.name: 7 is not of type"):
        validate_value(RESIZE, value, where="w")


def test_a_root_violation_has_the_root_path() -> None:
    with pytest.raises(ValidationError, match=r"^w: \$: 'width' is a required property$"):
        validate_value(RESIZE, {}, where="w")


def test_the_most_relevant_error_is_reported_for_alternatives() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "object",
                                             "properties": {"n": {"type": "integer"}}}]}
    with pytest.raises(ValidationError, match=r"\$\.n: 'x' is not of type 'integer'"):
        validate_value(schema, {"n": "x"}, where="w")


def test_an_invalid_schema_is_reported_as_such_naming_where() -> None:
    with pytest.raises(ValidationError, match=r"^step 'a' output: invalid schema: \$\.type"):
        validate_value({"type": "no-such-type"}, 1, where="step 'a' output")
    with pytest.raises(ValidationError, match=r"^x: invalid schema"):
        check_schema({"properties": {"a": {"minimum": "zero"}}}, "x")


@pytest.mark.parametrize("bad", [["a", "list"], "text", 3, None])
def test_a_schema_that_is_not_an_object_is_invalid(bad: Any) -> None:
    with pytest.raises(ValidationError, match=r"^x: invalid schema: expected an object"):
        check_schema(bad, "x")


def test_a_schema_that_is_not_json_is_invalid() -> None:
    with pytest.raises(ValidationError, match=r"^x: invalid schema: not JSON"):
        check_schema({"enum": [{1, 2}]}, "x")
    with pytest.raises(ValidationError, match=r"^x: invalid schema: not JSON"):
        check_schema({"maximum": float("nan")}, "x")


def test_an_unresolvable_ref_is_an_invalid_schema_and_is_never_fetched() -> None:
    with pytest.raises(ValidationError, match=r"^x: invalid schema"):
        validate_value({"$ref": "#/$defs/missing"}, 1, where="x")
    with pytest.raises(ValidationError, match=r"^x: invalid schema"):
        validate_value({"$ref": "https://example.invalid/s.json"}, 1, where="x")


def test_local_refs_work() -> None:
    schema = {"$defs": {"pos": {"type": "integer", "minimum": 0}},
              "properties": {"n": {"$ref": "#/$defs/pos"}}}
    validate_value(schema, {"n": 1}, where="x")
    with pytest.raises(ValidationError, match=r"\$\.n: -1 is less than the minimum of 0"):
        validate_value(schema, {"n": -1}, where="x")


def test_boolean_schemas_are_accepted() -> None:
    validate_value(True, {"anything": 1}, where="x")
    with pytest.raises(ValidationError, match=r"^x: \$: False schema"):
        validate_value(False, 1, where="x")


def test_draft_2020_12_is_the_default_and_schema_keyword_selects_another() -> None:
    tuple_2020 = {"prefixItems": [{"type": "integer"}], "items": False}
    with pytest.raises(ValidationError):
        validate_value(tuple_2020, [1, 2], where="x")
    tuple_draft7 = {"$schema": "http://json-schema.org/draft-07/schema#",
                    "items": [{"type": "integer"}], "additionalItems": False}
    with pytest.raises(ValidationError):
        validate_value(tuple_draft7, [1, 2], where="x")
    validate_value(tuple_draft7, [1], where="x")


def test_formats_are_annotations_only() -> None:
    validate_value({"type": "string", "format": "email"}, "not an email", where="x")


def test_long_messages_are_shortened() -> None:
    with pytest.raises(ValidationError) as info:
        validate_value({"type": "integer"}, "y" * 10_000, where="x")
    assert len(str(info.value)) < 400
    assert str(info.value).endswith("...")


def test_a_schema_is_compiled_once_for_repeated_validation() -> None:
    schemas.clear_cache()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for i in range(50):
        validate_value(schema, {"a": i}, where="x")
    validate_value(dict(reversed(list(schema.items()))), {"a": 1}, where="x")  # same schema
    info = schemas._compile.cache_info()
    assert info.misses == 1 and info.hits == 50


def test_mutating_a_schema_after_use_takes_effect() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    validate_value(schema, 1, where="x")
    schema["type"] = "string"
    validate_value(schema, "now a string", where="x")
    with pytest.raises(ValidationError):
        validate_value(schema, 1, where="x")


def test_an_invalid_schema_is_not_cached_as_valid() -> None:
    for _ in range(2):
        with pytest.raises(ValidationError, match="invalid schema"):
            check_schema({"type": 5}, "x")
