"""The run hash's JSON codec (``run_hash.dumps``/``loads``): the same bytes and values as
``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` and ``json.loads``, so data
written before and after keeps loading, and the same errors for what is not JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cordtrio.backends.redis import RedisDataError
from cordtrio.backends.redis.run_hash import dumps, loads
from cordtrio.errors import ValidationError

VALUES: list[Any] = [
    {"a": [1, 2.5, None, True, False, "é\n\u2028\x00\"\\"], "b": {"1": -0.0, "2": 1e300}},
    "plain", 3, 10**30, [], {}, {1: "int key", None: "none key", 2.5: "float key"},
    [[[{"deep": [1]}]]],
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    assert dumps(value, "where") == expected
    assert loads(expected, "k") == json.loads(expected)


def test_dumps_names_the_place_of_what_it_cannot_encode_and_recovers() -> None:
    circular: list[Any] = []
    circular.append(circular)
    outer = {"x": circular}
    with pytest.raises(ValidationError, match=r"run 'r' step 's': not JSON-serialisable: "
                                              r"Circular reference"):
        dumps(outer, "run 'r' step 's'")
    circular.clear()  # the failed encode left nothing behind: the same dict encodes now
    assert dumps(outer, "w") == b'{"x":[]}'
    with pytest.raises(ValidationError, match=r"not JSON-serialisable: .*object"):
        dumps([object()], "here")
    shared = [1]
    assert dumps({"a": shared, "b": shared}, "w") == b'{"a":[1],"b":[1]}'  # not circular


@pytest.mark.parametrize("raw", [b' {"a":1}\n', b'\xef\xbb\xbf{"a":1}', b'1\x00\x00\x00',
                                 '"s"', bytearray(b"[1]")])
def test_loads_reads_whatever_json_loads_reads(raw: Any) -> None:
    assert loads(raw, "k") == json.loads(raw)


def test_loads_keeps_nan_and_infinity() -> None:
    assert math.isnan(loads(b"NaN", "k"))
    assert loads(b"[Infinity,-Infinity]", "k") == [math.inf, -math.inf]


@pytest.mark.parametrize("raw", [b"", b"[1,2]x", b"\xff", b'"a\x01"', b"{", b"1 2"])
def test_loads_refuses_what_json_loads_refuses_naming_key_and_field(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(RedisDataError, match=r"redis key 'wf:run:r' field 'step:a': corrupt"):
        loads(raw, "wf:run:r", "step:a")
