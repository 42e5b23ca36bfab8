"""Concurrent calls of the store's scripts share one ``EVALSHA`` (``script_merge``), yet each
call keeps its own reply and its own error, as if it had been sent alone."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from cordtrio.backends.redis import RedisBackends, RedisDataError
from cordtrio.backends.redis.payloads import DEFAULT_TTL_SECONDS
from cordtrio.backends.redis.script_merge import MERGED, SET_EX_SHA, set_ex_args
from cordtrio.errors import LeaseLostError, NotFoundError
from cordtrio.model import RunStatus, StepRun, StepStatus, WorkflowRun
from cordtrio.ports import RunChanges

DEADLINE = 20
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sent_evalshas(redis: RedisBackends) -> list[int]:
    """Hook the batcher's pipelines: per pipeline sent, its number of ``EVALSHA``s."""
    adapter = redis.redis
    counts: list[int] = []
    original = adapter.run_batch

    async def counted(what: str, calls: Any) -> Any:
        counts.append(sum(1 for method, _a, _k in calls if method == "evalsha"))
        return await original(what, calls)

    adapter.run_batch = counted  # type: ignore[method-assign]
    return counts


def a_run(i: int) -> WorkflowRun:
    run = WorkflowRun(id=f"run-{i}", workflow_id="wf-1", org_id="org-a",
                      status=RunStatus.RUNNING, input={}, created_at=T0, updated_at=T0)
    run.steps["s0"] = StepRun(step_id="s0", status=StepStatus.RUNNING, attempts=1)
    return run


def step_done(run: WorkflowRun) -> RunChanges:
    run.steps["s0"].status = StepStatus.SUCCEEDED
    run.updated_at = T0 + timedelta(seconds=1)
    return RunChanges(header=True, steps={"s0"}, previous_status=RunStatus.RUNNING)


async def concurrently(calls: dict[str, Any]) -> dict[str, Any]:
    """Run the coroutine functions together; each one's result or exception."""
    out: dict[str, Any] = {}

    async def one(name: str) -> None:
        try:
            out[name] = await calls[name]()
        except Exception as exc:
            out[name] = exc

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for name in calls:
                nursery.start_soon(one, name)
    return out


async def test_concurrent_creates_and_step_writes_are_one_evalsha(
        redis: RedisBackends) -> None:
    store = redis.store
    runs = [a_run(i) for i in range(10)]
    sent = sent_evalshas(redis)
    created = await concurrently({r.id: (lambda r=r: store.create_run(r)) for r in runs})
    assert created == {r.id: None for r in runs}
    assert sent == [1]
    sent.clear()
    written = await concurrently(
        {r.id: (lambda r=r: store.save_run_changes(r, step_done(r))) for r in runs})
    assert written == {r.id: None for r in runs}
    assert sent == [1]
    for r in runs:
        assert (await store.get_run(r.id)).to_dict() == r.to_dict()
    assert sorted(await store.list_run_ids_by_status("running")) == sorted(
        r.id for r in runs)


async def test_each_merged_call_keeps_its_own_outcome(redis: RedisBackends) -> None:
    store = redis.store
    runs = [a_run(i) for i in range(4)]
    for r in runs:
        await store.create_run(r)
    await store.delete_run("run-1")  # missing: NotFoundError, nothing written
    await redis.redis.call("corrupt", "", "set", "wf:run:run-2", "not a hash")
    assert await store.acquire_lease("run-3", "engine-b", 30.0)
    fenced = step_done(runs[3])
    fenced.lease_owner = "engine-a"  # held by engine-b: LeaseLostError
    sent = sent_evalshas(redis)
    got = await concurrently({
        "ok": lambda: store.save_run_changes(runs[0], step_done(runs[0])),
        "missing": lambda: store.save_run_changes(runs[1], step_done(runs[1])),
        "corrupt": lambda: store.save_run_changes(runs[2], step_done(runs[2])),
        "fenced": lambda: store.save_run_changes(runs[3], fenced),
        "duplicate": lambda: store.create_run(a_run(0)),
        "release": lambda: store.release_lease("run-3", "engine-b"),
    })
    assert sent == [1]
    assert got["ok"] is None
    assert isinstance(got["missing"], NotFoundError)
    assert isinstance(got["corrupt"], RedisDataError)
    assert "wf:run:run-2" in str(got["corrupt"])
    assert isinstance(got["fenced"], LeaseLostError)
    assert "already exists" in str(got["duplicate"])
    assert got["release"] is None
    assert (await store.get_run("run-0")).steps["s0"].status == StepStatus.SUCCEEDED
    assert (await store.get_run("run-3")).steps["s0"].status == StepStatus.RUNNING
    with pytest.raises(NotFoundError):
        await store.get_run("run-1")
    assert await store.lease_owner("run-3") is None


async def test_the_merged_script_is_loaded_again_after_a_script_flush(
        redis: RedisBackends) -> None:
    store = redis.store
    runs = [a_run(i) for i in range(5)]
    await redis.redis.call("flush scripts", "", "script_flush")
    got = await concurrently({r.id: (lambda r=r: store.create_run(r)) for r in runs})
    assert got == {r.id: None for r in runs}
    sent = sent_evalshas(redis)
    got = await concurrently(
        {r.id: (lambda r=r: store.save_run_changes(r, step_done(r))) for r in runs})
    assert got == {r.id: None for r in runs}
    assert sent == [1]  # loaded: merged again at once


async def test_a_merged_call_with_thousands_of_arguments(redis: RedisBackends) -> None:
    store = redis.store
    big, small = a_run(0), a_run(1)
    big.steps["s0"].children = {f"s0[{i}]": StepRun(step_id=f"s0[{i}]", item=i)
                                for i in range(3000)}  # a create of ~12,000 arguments
    sent = sent_evalshas(redis)
    got = await concurrently({r.id: (lambda r=r: store.create_run(r)) for r in (big, small)})
    assert got == {big.id: None, small.id: None}
    assert sent == [1]
    stored = await store.get_run(big.id)
    assert list(stored.steps["s0"].children) == list(big.steps["s0"].children)
    assert (await store.get_run(small.id)).to_dict() == small.to_dict()


def sent_methods(redis: RedisBackends) -> list[list[str]]:
    """Hook the batcher's pipelines: per pipeline sent, the methods of its commands."""
    adapter = redis.redis
    sent: list[list[str]] = []
    original = adapter.run_batch

    async def recorded(what: str, calls: Any) -> Any:
        sent.append([method for method, _a, _k in calls])
        return await original(what, calls)

    adapter.run_batch = recorded  # type: ignore[method-assign]
    return sent


async def test_payload_writes_ride_in_the_merged_script(redis: RedisBackends) -> None:
    store, payloads, adapter = redis.store, redis.payloads, redis.redis
    runs = [a_run(i) for i in range(3)]
    for r in runs:
        await store.create_run(r)
    assert await adapter.call("lone set", "res:lone", "set", "res:lone", b"x", ex=60) is True
    sent = sent_methods(redis)
    got = await concurrently({
        **{f"put-{i}": (lambda i=i: payloads.put_result(f"res:job-{i}", b"v%d" % i))
           for i in range(5)},
        **{r.id: (lambda r=r: store.save_run_changes(r, step_done(r))) for r in runs},
        "set": lambda: adapter.call("set", "res:raw", "set", "res:raw", b"x", ex=60),
    })
    assert got == {**{f"put-{i}": None for i in range(5)}, **{r.id: None for r in runs},
                   "set": True}  # as the lone SET's reply
    assert sent == [["evalsha"]]  # one command carried the nine calls
    for i in range(5):
        assert await payloads.get_result(f"res:job-{i}") == b"v%d" % i
    ttl = await adapter.run("ttl", lambda c: c.ttl("res:job-0"))
    assert 0 < ttl <= DEFAULT_TTL_SECONDS
    for r in runs:
        assert (await store.get_run(r.id)).to_dict() == r.to_dict()


@pytest.mark.parametrize(("args", "kwargs", "merged"), [
    (("k", b"v"), {"ex": 60}, True),
    (("k", b"v"), {}, False),  # no TTL
    (("k", b"v"), {"ex": 0}, False),  # refused by the server: fails alone, as itself
    (("k", b"v"), {"ex": 60, "nx": True}, False),
    (("k", b"v"), {"px": 60}, False),
    (("k", b"v", 60), {}, True),  # the TTL by position (``put_result_then``)
    (("k", b"v", None), {}, False),
    (("k", b"v", 60), {"nx": True}, False),
])
def test_only_plain_payload_writes_merge(args: tuple[Any, ...], kwargs: dict[str, Any],
                                         merged: bool) -> None:
    assert (set_ex_args("set", args, kwargs) is not None) is merged
    assert set_ex_args("get", ("k",), {}) is None


def test_the_merged_head_is_one_text_argument() -> None:
    """The call counts travel as one space-separated text (the script splits it), and every
    count and a payload write's TTL as decimal text: the bytes the server gets for them are
    those of the integers."""
    step_sha = hashlib.sha1(MERGED.sources[0].encode()).hexdigest()
    step = (step_sha, 3, "k1", "k2", "k3", "a", b"b")
    put = set_ex_args("set", ("res:x", b"v"), {"ex": 86400})
    assert put == (SET_EX_SHA, 1, "res:x", b"v", "86400")
    assert MERGED.call_args([step, put]) == (
        MERGED.sha, "4", "k1", "k2", "k3", "res:x", "2 1 3 2 4 1 2", "a", b"b", b"v", "86400")


@pytest.mark.parametrize(("reply", "expected"), [
    ([[], b"a", 2, [b"x"]], [b"a", 2, [b"x"]]),  # the usual reply: no call failed
    ([[], b"a", None, 0], [b"a", None, 0]),  # a nil reply
    ([[2, b"ERR boom"], b"a", None, 1], [b"a", "error: ERR boom", 1]),  # its own error
    ([[1, "x", 3, b"y"], None, 2, None], ["error: x", 2, "error: y"]),
])
def test_a_merged_reply_is_each_calls_reply_or_error(reply: list[Any],
                                                     expected: list[Any]) -> None:
    import redis.exceptions as rx

    got = MERGED.replies(list(reply), len(reply) - 1)
    assert [f"error: {r}" if isinstance(r, rx.ResponseError) else r for r in got] == expected
    with pytest.raises(rx.ResponseError, match="unexpected reply"):
        MERGED.replies(reply, len(reply))
    with pytest.raises(rx.ResponseError, match="unexpected reply"):
        MERGED.replies([[1], *reply[1:]], len(reply) - 1)  # a failed call without its error


def test_merged_args_lay_out_the_head_then_each_calls_keys_and_arguments() -> None:
    members = [("1", ["a", "b"], [1, b"2", "3"]), ("3", ("k",), ()), ("4", ["x"], ["v"])]
    assert MERGED.merged_args(members) == (
        MERGED.sha, "4", "a", "b", "k", "x", "3 1 2 3 3 1 0 4 1 1", 1, b"2", "3", "v")
    assert MERGED.merged_args([]) == (MERGED.sha, "0", "0")
