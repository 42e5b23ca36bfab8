"""The payload effects an engine carries out without awaiting an in-process store
(``effects.store_payload_now``, ``effects.load_output_now``) give what the awaited ones
give, and leave to them what they cannot do alone."""

from __future__ import annotations

from typing import Any

import pytest

from cordtrio import json_payloads
from cordtrio.backends.memory import MemoryPayloadStore
from cordtrio.core.events import Dispatch, LoadedOutput
from cordtrio.core.plan import MAX_INLINE_OUTPUT_BYTES
from cordtrio.engine.effects import (
    load_output,
    load_output_now,
    store_payload,
    store_payload_now,
)
from cordtrio.protocol import JobRequest


def _dispatch(job_id: str, payload: Any, key: str | None = None) -> Dispatch:
    return Dispatch("a", "a", job_id, JobRequest(job_id), payload,
                    f"ctx:{job_id}" if key is None else key)


@pytest.mark.parametrize("payload", [{}, {"x": [1, "y"]}, {"bad": object()}, {"t": (1,)}])
@pytest.mark.parametrize("key", [None, "", "res:elsewhere", "ctx:"])
async def test_storing_a_payload_now_does_what_the_awaited_effect_does(
        payload: Any, key: str | None) -> None:
    now_store, awaited_store = MemoryPayloadStore(), MemoryPayloadStore()
    now = store_payload_now(json_payloads.path_for(now_store), _dispatch("r:a@1", payload, key))
    awaited = await store_payload(json_payloads.path_for(awaited_store),
                                  _dispatch("r:a@1", payload, key))
    assert now == awaited or (now is None and key == "")  # nothing to store: the effect's
    if key is None and not awaited:
        assert await now_store.get_context("ctx:r:a@1") == \
            await awaited_store.get_context("ctx:r:a@1")
    assert store_payload_now(None, _dispatch("r:a@1", payload)) is None


_RESULTS: list[Any] = [
    {"ok": True}, {}, [1, {"x": None}], "text",
    {"big": "x" * (MAX_INLINE_OUTPUT_BYTES + 1)},  # too large
    {"n": list(range(10**7, 10**7 + 20_000))},  # its bound over the limit, its text within
    b'{"c": 3}', b"not json", b"\xff\xfe", b"x" * (MAX_INLINE_OUTPUT_BYTES + 1),  # as bytes
]


@pytest.mark.parametrize("stored", _RESULTS)
@pytest.mark.parametrize("pointer", ["redis://res:r:a@1", "redis://res:r:b@1",
                                     "redis://ctx:r:a@1", "redis://wf:run:r", "res:r:a@1"])
async def test_loading_an_output_now_gives_what_the_awaited_effect_gives(
        pointer: str, stored: Any) -> None:
    store = MemoryPayloadStore()
    path = json_payloads.path_for(store)
    if isinstance(stored, bytes):
        await store.put_result("res:r:a@1", stored)
    else:
        await path.put_result("res:r:a@1", path.encode(stored, False))
    await path.put_context("ctx:r:a@1", path.encode({"in": 1}, True))
    into = LoadedOutput("an earlier result's", True)  # filled again, or left
    now = load_output_now(path, pointer, into)
    assert now is not None and now == await load_output(path, pointer)
    assert now is into if not now.error else into == LoadedOutput("an earlier result's", True)


async def test_another_store_is_awaited() -> None:
    class Counting(MemoryPayloadStore):
        async def get_result_payload(self, key: str) -> json_payloads.JsonPayload:
            return await super().get_result_payload(key)

    path = json_payloads.path_for(Counting())
    assert load_output_now(path, "redis://res:r:a@1", LoadedOutput()) is None
    assert store_payload_now(path, _dispatch("r:a@1", {})) is None
