"""The payload namespace rule (``cordtrio.payloads``): which keys and pointers are refused."""

from __future__ import annotations

import pytest

from cordtrio.errors import PayloadPointerError
from cordtrio.payloads import check_payload_key, key_from_pointer, pointer_problem


@pytest.mark.parametrize("key", ["ctx:a\nb", "res:a\rb", "res:a\x00b", "ctx:j ", "\tctx:j",
                                 "ctx:", "res:", "wf:run:x", "ctx"])
def test_malformed_or_foreign_keys_are_refused(key: str) -> None:
    with pytest.raises(PayloadPointerError):
        check_payload_key(key)
    assert pointer_problem("redis://" + key) != ""


@pytest.mark.parametrize("key", ["ctx:run:s@1", "res:run-1:s[3]@2", "res:é\tx"])
def test_keys_of_the_namespace_pass(key: str) -> None:
    assert check_payload_key(key) == key
    assert key_from_pointer("redis://" + key) == key
    assert pointer_problem("redis://" + key) == ""


def test_a_pointer_to_the_other_half_is_refused() -> None:
    assert pointer_problem("redis://ctx:j", "res:") != ""
    with pytest.raises(PayloadPointerError):
        key_from_pointer("redis://res:j", "ctx:")
