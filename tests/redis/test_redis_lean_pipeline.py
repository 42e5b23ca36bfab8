"""``lean_pipeline``: the batcher's pipelines give what redis-py's ``Pipeline`` gives — the
same commands on the wire, the same replies, the same errors — and keep their connections
only while they are sound."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aredis
import redis.exceptions as rx

from cordtrio.backends.redis import RedisBackends
from cordtrio.backends.redis.lean_pipeline import KeptConnections, command, execute

SCRIPT = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"

# (method, args, kwargs) of every kind of call the batcher sends, on the data of ``seed``
READS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("get", ("s:1",), {}),
    ("get", ("s:missing",), {}),
    ("get", ("h:1",), {}),  # WRONGTYPE
    ("mget", (["s:1", "s:missing", "h:1", "s:2"],), {}),
    ("exists", ("s:1", "s:missing"), {}),
    ("hget", ("h:1", "a"), {}),
    ("hgetall", ("h:1",), {}),
    ("hgetall", ("s:1",), {}),  # WRONGTYPE
    ("hexists", ("h:1", "a"), {}),
    ("hexists", ("h:1", "zz"), {}),
    ("scard", ("set:1",), {}),
    ("smembers", ("set:1",), {}),
    ("sismember", ("set:1", "x"), {}),
    ("lrange", ("l:1", 0, -1), {}),
    ("zrevrange", ("z:1", 0, -1), {}),
    ("zrevrange", ("z:1", 0, -1), {"withscores": True}),
    ("zrevrangebyscore", ("z:1", "+inf", "-inf"), {}),
    ("zrevrangebyscore", ("z:1", 10, 0), {"start": 0, "num": 1, "withscores": True}),
    ("evalsha", ("0" * 40, 0), {}),  # NOSCRIPT
]


async def seed(client: Any) -> str:
    """The data READS reads; the SHA of SCRIPT, loaded."""
    await client.set("s:1", b"one")
    await client.set("s:2", b"two")
    await client.hset("h:1", mapping={"a": "1", "b": "2"})
    await client.sadd("set:1", "x", "y")
    await client.rpush("l:1", "p", "q")
    await client.zadd("z:1", {"m": 1, "n": 2})
    return str(await client.script_load(SCRIPT))


def same(mine: list[Any], theirs: list[Any]) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        if isinstance(b, Exception):
            assert type(a) is type(b) and str(a) == str(b)
        else:
            assert a == b and type(a) is type(b)


async def both(redis: RedisBackends, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
               ) -> tuple[list[Any], list[Any]]:
    """``calls`` through ``lean_pipeline.execute`` and through redis-py's ``Pipeline``."""
    adapter = redis.redis
    commands = [command(adapter.client, m, a, k) for m, a, k in calls]
    kept = KeptConnections(adapter.client.connection_pool, 1)

    async def lean(client: Any) -> list[Any]:
        try:
            return await execute(client, commands, kept)
        finally:
            await kept.release_all()

    async def redis_py(client: Any) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for m, a, k in calls:
                getattr(pipe, m)(*a, **k)
            return list(await pipe.execute(raise_on_error=False))

    return await adapter.run("lean", lean), await adapter.run("redis-py", redis_py)


async def test_replies_and_errors_are_redis_pys(redis: RedisBackends) -> None:
    sha = await redis.redis.run("seed", seed)
    calls = [*READS, ("evalsha", (sha, 1, "k", "v", 41), {}), ("script_load", (SCRIPT,), {})]
    mine, theirs = await both(redis, calls)
    same(mine, theirs)
    assert mine[0] == b"one" and mine[1] is None
    assert isinstance(mine[2], rx.ResponseError) and "WRONGTYPE" in str(mine[2])
    assert isinstance(mine[READS.index(("evalsha", ("0" * 40, 0), {}))], rx.NoScriptError)


async def test_writes_reply_as_with_redis_py(redis: RedisBackends) -> None:
    def writes(tag: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        return [("set", (f"{tag}:a", b"v"), {}), ("set", (f"{tag}:b", b"v"), {"ex": 60}),
                ("set", (f"{tag}:c", "text"), {"nx": True}),
                ("set", (f"{tag}:c", "again"), {"nx": True}),
                ("delete", (f"{tag}:a", f"{tag}:missing"), {})]

    mine, theirs = await both(redis, writes("w"))  # lean first, then redis-py: same keys
    assert mine == [True, True, True, None, 1]
    assert theirs == [True, True, None, None, 1]  # w:c exists by now: NX refuses
    adapter = redis.redis
    ttl = await adapter.run("ttl", lambda c: c.ttl("w:b"))
    assert 0 < ttl <= 60


@pytest.mark.parametrize("call", [
    ("get", ("k",), {}),
    ("set", ("k", b"v"), {}),
    ("set", ("k", b"v"), {"ex": 30}),
    ("set", ("k", "v"), {"ex": None}),
    ("set", ("k", "v"), {"nx": True}),
    ("set", ("k", "v"), {"ex": 5, "nx": True}),
    ("mget", (["a", "b", "c"],), {}),
    ("exists", ("k",), {}),
    ("exists", ("k1", "k2"), {}),
    ("evalsha", ("f" * 40, 2, "k1", "k2", "arg", 3, 1.5), {}),
])
def test_the_hot_commands_are_built_as_redis_py_builds_them(
        call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    method, args, kwargs = call
    client = aredis.Redis()  # never connects: commands are only built
    pipe = client.pipeline(transaction=False)
    getattr(pipe, method)(*args, **kwargs)
    ((expected_args, expected_options),) = pipe.command_stack
    built_args, built_options = command(client, method, args, kwargs)
    assert built_args == expected_args
    assert built_options == {k: v for k, v in expected_options.items() if k != "keys"}


class _Conn:
    def __init__(self) -> None:
        self.is_connected = True


class _Pool:
    def __init__(self) -> None:
        self.out: list[_Conn] = []

    async def get_connection(self) -> _Conn:
        conn = _Conn()
        self.out.append(conn)
        return conn

    async def release(self, conn: _Conn) -> None:
        self.out.remove(conn)


async def test_kept_connections_are_reused_and_given_back() -> None:
    pool = _Pool()
    kept = KeptConnections(pool, 2)
    a, b, c = await kept.take(), await kept.take(), await kept.take()
    for conn in (a, b, c):
        await kept.give_back(conn)
    assert pool.out == [a, b]  # two kept, the third went back to the pool
    assert await kept.take() is b
    b.is_connected = False
    await kept.give_back(b)  # dropped: back to the pool, which reconnects it when lent
    assert pool.out == [a]
    await kept.release_all()
    assert pool.out == []
    d = await kept.take()
    await kept.give_back(d)  # closed: nothing is kept any more
    assert pool.out == []
