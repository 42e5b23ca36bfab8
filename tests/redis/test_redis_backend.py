"""The Redis backends beyond the conformance suite: connecting, errors, corrupt data, the
SPEC §11 key layout, payload TTLs, and the cost of ``save_run_changes``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from cordtrio.backends.redis import RedisBackends, RedisDataError, connect, mask_url
from cordtrio.backends.redis.testing import RedisServer, free_port
from cordtrio.errors import CordtrioError, NotFoundError, StoreError
from cordtrio.model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    TimelineEvent,
    Workflow,
    WorkflowRun,
)
from cordtrio.ports import RunChanges

T0 = datetime(2030, 1, 1, tzinfo=UTC)
CONNECT_BUDGET = 5  # seconds every failing connect must take at most


async def raw(r: RedisBackends, method: str, *args: Any, **kw: Any) -> Any:
    """A plain Redis command through the backend's own bridge."""
    return await r.redis.call("test", "", method, *args, **kw)


def workflow(wid: str = "wf-1", org_id: str = "org-a") -> Workflow:
    return Workflow(id=wid, org_id=org_id, steps={
        "fetch": Step(id="fetch", topic="job.fetch"),
        "each": Step(id="each", topic="job.each", for_each="steps.fetch.output",
                     depends_on=["fetch"]),
    })


def fanout_run(rid: str = "run-1", children: int = 3, **kw: Any) -> WorkflowRun:
    r = WorkflowRun(id=rid, workflow_id="wf-1", org_id="org-a", status=RunStatus.RUNNING,
                    input={"n": children}, created_at=T0, updated_at=T0, **kw)
    r.steps["fetch"] = StepRun(step_id="fetch", status=StepStatus.SUCCEEDED, attempts=1)
    parent = StepRun(step_id="each", status=StepStatus.RUNNING)
    for i in range(children):
        cid = f"each[{i}]"
        parent.children[cid] = StepRun(step_id=cid, status=StepStatus.RUNNING, item=i,
                                       job_id=f"{rid}:{cid}@1", attempts=1)
    r.steps["each"] = parent
    r.context = {"steps": {"fetch": {"output": list(range(children))}}, "report": {"t": 1}}
    return r


def child_result(r: WorkflowRun, i: int) -> RunChanges:
    """What the engine changes when child ``i`` succeeds: the child, its context entry,
    the header (``updated_at``)."""
    cid = f"each[{i}]"
    child = r.steps["each"].children[cid]
    child.status = StepStatus.SUCCEEDED
    child.output = {"value": i * 2}
    r.context["steps"][cid] = {"result_ptr": f"redis://res:{cid}", "output": {"value": i * 2}}
    r.updated_at = (r.updated_at or T0) + timedelta(seconds=1)
    changes = RunChanges(header=True, context_steps={cid}, previous_status=RunStatus.RUNNING)
    changes.touch_child("each", cid)
    return changes


# ----------------------------------------------------------------------------- connect


@pytest.mark.parametrize("url", [
    "http://localhost:6379/0",
    "localhost:6379",
    "redis://localhost:notaport/0",
])
async def test_connect_rejects_a_bad_url_naming_it(url: str) -> None:
    with trio.fail_after(CONNECT_BUDGET), pytest.raises(CordtrioError) as info:
        async with connect(url):
            pass  # pragma: no cover
    assert url in str(info.value)


async def test_connect_to_a_closed_port_fails_fast_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(CONNECT_BUDGET), pytest.raises(StoreError) as info:
        async with connect(url):
            pass  # pragma: no cover
    assert url in str(info.value) and "cannot connect" in str(info.value)


async def test_a_silent_server_times_out_within_the_connect_timeout() -> None:
    """A TCP peer that accepts but never answers: PING times out (real time, 0.3 s)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    with trio.fail_after(CONNECT_BUDGET), pytest.raises(StoreError, match=url):
        async with connect(url, connect_timeout=0.3):
            pass  # pragma: no cover
    for listener in listeners:
        await listener.aclose()


async def test_a_wrong_password_fails_naming_the_url_with_the_password_masked(
    redis_password_server: RedisServer,
) -> None:
    server = redis_password_server
    url = f"redis://:wrong-Secret@{server.host}:{server.port}/0"
    with trio.fail_after(CONNECT_BUDGET), pytest.raises(StoreError) as info:
        async with connect(url):
            pass  # pragma: no cover
    message = str(info.value)
    assert f"redis://:***@{server.host}:{server.port}/0" in message
    assert "wrong-Secret" not in message


async def test_a_missing_password_fails_naming_the_url(
    redis_password_server: RedisServer,
) -> None:
    server = redis_password_server
    url = f"redis://{server.host}:{server.port}/0"
    with trio.fail_after(CONNECT_BUDGET), pytest.raises(StoreError, match=url):
        async with connect(url):
            pass  # pragma: no cover


async def test_the_right_password_connects(redis_password_server: RedisServer) -> None:
    async with connect(redis_password_server.url) as r:
        await r.payloads.put_result("res:j", b"1")
        assert await r.payloads.get_result("res:j") == b"1"
        assert "***" in r.url and redis_password_server.password not in r.url


async def test_more_commands_in_flight_than_connections_wait_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """Hundreds of runs in flight issue more concurrent commands than the pool has
    connections: they queue for a connection, none fails with "too many connections"."""
    async with connect(redis_server.url, max_connections=4) as r:
        got: list[bytes] = []

        async def one(i: int) -> None:
            await r.payloads.put_result(f"res:pool-{i}", str(i).encode())
            got.append(await r.payloads.get_result(f"res:pool-{i}"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        assert sorted(got) == sorted(str(i).encode() for i in range(200))


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("redis://user@h:1/0") == "redis://user@h:1/0"
    assert mask_url("redis://h:1/0?password=pw&db=1") == "redis://h:1/0?password=***&db=1"


async def test_a_server_going_away_gives_store_errors_naming_the_url(
    disposable_server: RedisServer,
) -> None:
    async with connect(disposable_server.url, connect_timeout=1, reconnect_timeout=0.5) as r:
        await r.store.save_workflow(workflow())
        disposable_server.process.terminate()
        await trio.to_thread.run_sync(disposable_server.process.wait)
        for call in (r.store.get_workflow("wf-1"), r.store.list_runs(),
                     r.payloads.get_result("res:x"), r.schemas.list()):
            with trio.fail_after(CONNECT_BUDGET), pytest.raises(StoreError) as info:
                await call
            assert disposable_server.url in str(info.value)


# ------------------------------------------------------------------------- corrupt data


async def test_a_truncated_header_is_an_error_naming_the_key_and_listing_skips_it(
    redis: RedisBackends,
) -> None:
    store = redis.store
    for rid in ("r1", "r2"):
        await store.create_run(fanout_run(rid))
    await raw(redis, "hset", "wf:run:r1", "header", b'{"id": "r1", "status": "runn')
    with pytest.raises(RedisDataError, match=r"wf:run:r1.*header"):
        await store.get_run("r1")
    assert [r.id for r in await store.list_runs()] == ["r2"]
    assert [r.id for r in await store.list_runs_by_workflow("wf-1")] == ["r2"]
    # deleting a corrupt run still cleans up what it can
    await store.delete_run("r1")
    with pytest.raises(NotFoundError):
        await store.get_run("r1")
    assert await store.list_run_ids_by_status("running") == ["r2"]


async def test_a_string_where_a_run_hash_belongs_is_an_error_naming_the_key(
    redis: RedisBackends,
) -> None:
    store = redis.store
    await store.create_run(fanout_run("good"))
    await raw(redis, "set", "wf:run:bad", b"not a hash")
    await raw(redis, "zadd", "wf:runs:all", {"bad": T0.timestamp() + 5})
    await raw(redis, "zadd", "wf:runs:wf-1", {"bad": T0.timestamp() + 5})
    with pytest.raises(RedisDataError, match="wf:run:bad"):
        await store.get_run("bad")
    with pytest.raises(RedisDataError, match="wf:run:bad"):
        await store.save_run_changes(fanout_run("bad"), RunChanges(steps={"fetch"}))
    assert [r.id for r in await store.list_runs()] == ["good"]
    assert [r.id for r in await store.list_runs_by_workflow("wf-1")] == ["good"]


async def test_a_corrupt_child_or_context_field_names_the_key_and_field(
    redis: RedisBackends,
) -> None:
    await redis.store.create_run(fanout_run("r1"))
    await raw(redis, "hset", "wf:run:r1", "child:each:each[1]", b"{oops")
    with pytest.raises(RedisDataError, match=r"wf:run:r1.*child:each:each\[1\]"):
        await redis.store.get_run("r1")
    await raw(redis, "hset", "wf:run:r1", "child:each:each[1]",
              json.dumps({"step_id": "each[1]", "status": "no-such-status"}).encode())
    with pytest.raises(RedisDataError, match=r"wf:run:r1.*no-such-status"):
        await redis.store.get_run("r1")


async def test_stored_workflow_with_unknown_keys_stays_readable(redis: RedisBackends) -> None:
    """Definitions are strict when loaded from files; stored documents are not, so data
    written by another version of cordtrio (a field this one does not know) still loads."""
    await raw(redis, "set", "wf:def:w1", json.dumps({
        "id": "w1", "added_later": True,
        "steps": {"a": {"topic": "t", "priority_hint": 3, "retry": {"max_retries": 1,
                                                                     "jitter": 0.1}}},
    }).encode())
    wf = await redis.store.get_workflow("w1")
    assert wf.steps["a"].topic == "t" and wf.steps["a"].retry is not None
    assert wf.steps["a"].retry.max_retries == 1


async def test_a_workflow_read_again_is_an_equal_copy_and_follows_changes(
        redis: RedisBackends) -> None:
    await redis.store.save_workflow(workflow())
    first = await redis.store.get_workflow("wf-1")
    again = await redis.store.get_workflow("wf-1")  # the same bytes: a copy, not a parse
    assert again is not first and again.to_dict() == first.to_dict()
    first.steps["fetch"].topic = "changed by the caller"
    first.steps.pop("each")
    third = await redis.store.get_workflow("wf-1")
    assert third.to_dict() == again.to_dict() and third.steps["fetch"].topic == "job.fetch"
    changed = workflow()
    changed.steps["fetch"].topic = "job.fetch.v2"
    await redis.store.save_workflow(changed)
    assert (await redis.store.get_workflow("wf-1")).steps["fetch"].topic == "job.fetch.v2"
    await raw(redis, "set", "wf:def:wf-1", b"{not json")
    with pytest.raises(RedisDataError):
        await redis.store.get_workflow("wf-1")


async def test_corrupt_workflows_timelines_payloads_and_schemas(redis: RedisBackends) -> None:
    store = redis.store
    await store.save_workflow(workflow("w1"))
    await store.save_workflow(workflow("w2"))
    await raw(redis, "set", "wf:def:w1", b'{"id": "w1", "steps": {')
    with pytest.raises(RedisDataError, match="wf:def:w1"):
        await store.get_workflow("w1")
    assert [w.id for w in await store.list_workflows()] == ["w2"]

    await store.append_timeline_event("r", TimelineEvent(time=T0, type="a"))
    await raw(redis, "rpush", "wf:run:timeline:r", b"{broken", b'{"time": 5}')
    await store.append_timeline_event("r", TimelineEvent(time=T0, type="b"))
    assert [e.type for e in await store.list_timeline_events("r")] == ["a", "b"]

    await raw(redis, "hset", "ctx:job", "x", b"1")
    with pytest.raises(RedisDataError, match="ctx:job"):
        await redis.payloads.get_context("ctx:job")

    await redis.schemas.register("s", {"type": "object"})
    await raw(redis, "set", "schema:s", b"[1, 2")
    with pytest.raises(RedisDataError, match="schema:s"):
        await redis.schemas.validate("s", {})


# --------------------------------------------------------------------------- key layout


async def test_keys_follow_the_spec_layout(redis: RedisBackends) -> None:
    store = redis.store
    await store.save_workflow(workflow("wf-1", "org-a"))
    r = fanout_run("run-1", children=2, idempotency_key="idem-1")
    await store.create_run(r)
    await store.save_run_changes(r, child_result(r, 0))
    await store.append_timeline_events("run-1", [TimelineEvent(time=T0, type="x")])
    await redis.payloads.put_context("ctx:run-1:fetch@1", b"{}")
    await redis.payloads.put_result("res:run-1:fetch@1", b"{}")
    await redis.schemas.register("point", {"type": "object"})

    expected = {
        "wf:def:wf-1": "string",
        "wf:index:all": "zset",
        "wf:index:org:org-a": "zset",
        "wf:run:run-1": "hash",
        "wf:runs:wf-1": "zset",
        "wf:runs:all": "zset",
        "wf:runs:status:running": "zset",
        "wf:runs:active:org-a": "set",
        "wf:run:timeline:run-1": "list",
        "wf:run:idempotency:idem-1": "string",
        "ctx:run-1:fetch@1": "string",
        "res:run-1:fetch@1": "string",
        "schema:point": "string",
        "schema:index": "set",
    }
    keys = {k.decode() for k in await raw(redis, "keys", "*")}
    assert keys == set(expected)
    for key, kind in expected.items():
        assert (await raw(redis, "type", key)).decode() == kind, key

    assert await raw(redis, "zrange", "wf:runs:status:running", 0, -1) == [b"run-1"]
    assert await raw(redis, "smembers", "wf:runs:active:org-a") == {b"run-1"}
    assert await raw(redis, "get", "wf:run:idempotency:idem-1") == b"run-1"
    assert json.loads(await raw(redis, "get", "wf:def:wf-1"))["id"] == "wf-1"
    fields = {f.decode() for f in await raw(redis, "hkeys", "wf:run:run-1")}
    parts = {f for f in fields if not f.startswith("ord:")}
    assert parts == {
        "header", "input", "step:fetch", "step:each", "child:each:each[0]",
        "child:each:each[1]", "ctx:report", "ctx:steps", "ctxstep:fetch", "ctxstep:each[0]",
        "saved",  # the last step write's token (a write sent again is applied once)
    }
    assert {f for f in fields if f.startswith("ord:")} == {
        f"ord:{f}" for f in parts - {"header", "input", "ctx:steps", "saved"}}  # ranks, not
    # needed for the header, the input, the marker of a map context["steps"] (always last)
    # and the token
    header = json.loads(await raw(redis, "hget", "wf:run:run-1", "header"))
    assert header["status"] == "running" and "input" not in header
    assert json.loads(await raw(redis, "hget", "wf:run:run-1", "input")) == {"n": 2}

    await store.delete_run("run-1")
    left = {k.decode() for k in await raw(redis, "keys", "wf:run*")}
    assert left == set()


async def test_parent_ids_with_colons_are_escaped_in_child_fields(redis: RedisBackends) -> None:
    r = WorkflowRun(id="r", workflow_id="wf-1", created_at=T0)
    r.steps["a:b%"] = StepRun(step_id="a:b%", children={"x:1": StepRun(step_id="x:1")})
    r.steps["a"] = StepRun(step_id="a", children={"b%:x:1": StepRun(step_id="b%:x:1")})
    await redis.store.create_run(r)
    assert (await redis.store.get_run("r")).to_dict() == r.to_dict()
    assert await raw(redis, "hexists", "wf:run:r", "child:a%3Ab%25:x:1")


async def test_big_hashes_keep_insertion_order(redis: RedisBackends) -> None:
    """Redis forgets field order once a hash is large; the stored ranks keep it."""
    r = fanout_run("r", children=300)
    await redis.store.create_run(r)
    parent = r.steps["each"]
    parent.children["late"] = StepRun(step_id="late")
    del parent.children["each[5]"]
    changes = RunChanges()
    changes.touch_child("each", "late")
    changes.touch_child("each", "each[5]")
    await redis.store.save_run_changes(r, changes)
    changes = RunChanges()
    parent.children["each[5]"] = StepRun(step_id="each[5]")  # re-added: now last
    changes.touch_child("each", "each[5]")
    changes.touch_child("each", "each[7]")  # rewritten in place: keeps its rank
    await redis.store.save_run_changes(r, changes)
    got = await redis.store.get_run("r")
    assert list(got.steps["each"].children) == list(parent.children)
    assert list(got.steps["each"].children)[-2:] == ["late", "each[5]"]


# ---------------------------------------------------------------------- payload TTLs


@pytest.mark.parametrize("ttl", [120, 86400])
async def test_payloads_carry_the_configured_ttl(redis_url: str, ttl: int) -> None:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()) \
        if redis_url == "fakeredis" else None
    async with connect(redis_url, payload_ttl_seconds=ttl, client=client) as r:
        await r.payloads.put_context("ctx:j", b"x")
        await r.payloads.put_result("res:j", b"y")
        for key in ("ctx:j", "res:j"):
            assert ttl - 2 <= await raw(r, "ttl", key) <= ttl


async def test_default_ttl_is_a_day_and_none_means_forever(redis: RedisBackends) -> None:
    await redis.payloads.put_result("res:j", b"x")
    assert 86400 - 2 <= await raw(redis, "ttl", "res:j") <= 86400
    redis.payloads.ttl_seconds = None
    await redis.payloads.put_result("res:j", b"x")
    assert await raw(redis, "ttl", "res:j") == -1


# ----------------------------------------------------------------- save_run_changes cost


async def test_a_child_result_rewrites_only_that_childs_fields(redis: RedisBackends) -> None:
    r = fanout_run("r", children=50)
    await redis.store.create_run(r)
    before = await raw(redis, "hgetall", "wf:run:r")

    child = r.steps["each"].children["each[7]"]
    child.status = StepStatus.SUCCEEDED
    r.steps["each"].children["each[8]"].status = StepStatus.FAILED  # not named: not written
    r.status = RunStatus.FAILED  # not named either
    changes = RunChanges()
    changes.touch_child("each", "each[7]")
    await redis.store.save_run_changes(r, changes)
    after = await raw(redis, "hgetall", "wf:run:r")
    # (and the write's token, ``saved``: a write sent again after a lost reply is not
    # applied twice)
    assert {k for k in after if after[k] != before.get(k)} == {b"child:each:each[7]",
                                                              b"saved"}
    assert set(after) == set(before) | {b"saved"}
    r.steps["each"].children["each[8]"].status = StepStatus.RUNNING  # as stored
    r.status = RunStatus.RUNNING

    changes = child_result(r, 9)
    await redis.store.save_run_changes(r, changes)
    again = await raw(redis, "hgetall", "wf:run:r")
    changed = {k.decode() for k in again if again[k] != after.get(k)}
    assert changed == {"header", "child:each:each[9]", "ctxstep:each[9]",
                       "ord:ctxstep:each[9]", "saved"}  # a new context entry gets its rank
    assert (await redis.store.get_run("r")).to_dict() == r.to_dict()


class RoundTrips:
    """Counts the backend's round trips (a lone call over the bridge or a batch of calls
    sent by the batcher alike)."""

    def __init__(self, r: RedisBackends, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("_run_raw", "run_batch"):
            original = getattr(r.redis, name)

            async def counting(*args: Any, _original: Any = original, **kw: Any) -> Any:
                self.count += 1
                return await _original(*args, **kw)

            monkeypatch.setattr(r.redis, name, counting)


async def test_a_child_result_is_one_round_trip_whatever_the_run_size(
    redis: RedisBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(redis, monkeypatch)
    for n in (100, 5000):
        r = fanout_run(f"run-{n}", children=n)
        await redis.store.create_run(r)
        for i in (0, n // 2, n - 1):
            trips.count = 0
            await redis.store.save_run_changes(r, child_result(r, i))
            # (the first write on a server that does not know the script yet also loads
            # it: NOSCRIPT, SCRIPT LOAD, then the write)
            assert trips.count in ((1, 3) if (n, i) == (100, 0) else (1,))
        assert (await redis.store.get_run(r.id)).to_dict() == r.to_dict()


async def commandstats(r: RedisBackends) -> dict[str, int]:
    info = await raw(r, "info", "commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


async def count_commands(r: RedisBackends, action: Any) -> dict[str, int]:
    """The commands the server executed for ``await action()`` (INFO commandstats)."""
    await raw(r, "config_resetstat")
    await action()
    stats = await commandstats(r)
    for own in ("config|resetstat", "config", "info"):
        stats.pop(own, None)
    return stats


@pytest.mark.parametrize("redis_kind", ["redis"])
async def test_redis_commands_per_child_result_are_a_small_constant(
    redis: RedisBackends,
) -> None:
    """Measured on the real server: the same commands for 100 and 5,000 children."""
    seen: list[dict[str, int]] = []
    for n in (100, 5000):
        r = fanout_run(f"run-{n}", children=n)
        await redis.store.create_run(r)
        await redis.store.save_run_changes(r, child_result(r, 0))  # context entry now exists
        stats = await count_commands(
            redis, lambda r=r, n=n: redis.store.save_run_changes(r, child_result(r, n - 1)))
        seen.append(stats)
    small, big = seen
    assert small == big
    # one script: the write's token (HGET), one HSET (header, child, context entry, the
    # ranks of the new ones; the store knows which fields the run holds: it created it),
    # ZADD ×2 (status, all)
    assert small == {"evalsha": 1, "hget": 1, "hset": 1, "zadd": 2}


# ------------------------------------------------------------------------ the adapter


async def test_a_watch_conflict_is_retried(redis: RedisBackends) -> None:
    attempts = 0

    async def txn(pipe: Any) -> Any:
        nonlocal attempts
        attempts += 1
        value = await pipe.get("k")
        if attempts == 1:  # somebody else writes the watched key before our EXEC
            await redis.redis.client.set("k", b"theirs")
        pipe.multi()
        pipe.set("k", (value or b"") + b"+ours")
        return await pipe.execute()

    await redis.redis.transaction("test", "k", ["k"], txn)
    assert attempts == 2
    assert await raw(redis, "get", "k") == b"theirs+ours"


async def test_redis_errors_never_escape_raw(redis: RedisBackends) -> None:
    with pytest.raises(StoreError, match=r"unknown command|ERR"):
        await raw(redis, "execute_command", "NO-SUCH-COMMAND")
    await raw(redis, "set", "s", b"x")
    with pytest.raises(RedisDataError, match="'s'"):
        await redis.redis.call("read", "s", "hgetall", "s")


async def test_exceptions_leave_the_connect_block_unwrapped() -> None:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    with pytest.raises(KeyError, match="mine"):
        async with connect("fakeredis", client=client):
            raise KeyError("mine")
    group = ExceptionGroup("user's own", [ValueError("x")])
    with pytest.raises(ExceptionGroup) as info:
        async with connect("fakeredis", client=client):
            raise group
    assert info.value is group
    with trio.move_on_after(0.01) as scope:  # cancellation passes through as usual
        async with connect("fakeredis", client=client):
            await trio.sleep_forever()
    assert scope.cancelled_caught
