"""How many Redis commands the engine issues per step, and that the number
does not grow with the run: a chain of 5 vs 50 steps, a fan-out of 100 vs 2,000 children.

The test plays the worker itself: it takes each ``JobRequest`` off the bus, writes the result
payload, and hands the ``JobResult`` to ``engine.handle_job_result``, which returns once the
result is applied, persisted and the next job published. A ``CommandCounter`` on the engine's
client counts the commands of exactly that call; on a real server the ``INFO commandstats``
delta over the same calls (read through a second, uncounted connection) must agree.

``python -m pytest tests/redis/test_redis_command_counts.py -s`` prints the per-step figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import trio

from cordtrio import open_engine
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends, connect
from cordtrio.backends.redis.payloads import RedisPayloadStore
from cordtrio.backends.redis.testing import CommandCounter
from cordtrio.engine.supervisor import Engine
from cordtrio.model import RunStatus, Step, Workflow
from cordtrio.payloads import pointer_for_key, result_key
from cordtrio.protocol import SUBJECT_SUBMIT, JobRequest, JobResult, JobStatus

DEADLINE = 120  # seconds: the 2,000-child fan-out on a real server takes a few

# What one result costs, measured (real server and fakeredis alike): GET the result payload,
# then one script (EVALSHA) that reads the run's last write token (HGET: a write sent again
# after a lost reply is not applied twice), writes the changed hash fields and the ranks of
# the new ones in one HSET (chain: header, the finished step, the dispatched step, the
# finished step's context entry; fan-out: header, the child, its context entry) — the store
# knows which fields the run holds (it created the run: ``field_mirror``), so the script
# reads no other field, it checks the count HSET reports — moves the run in the status and
# global indexes (2 ZADD), appends the timeline (RPUSH; LTRIM only past the cap) and, for a
# chain, SETs the next job's input payload.
#
# With run leases (a store that implements ``RunLeases``, as the Redis store does for several
# engines) the script first GETs the lease (the fence).
CHAIN_STEP = Counter(
    {"get": 1, "evalsha": 1, "hget": 1, "hset": 1, "zadd": 2, "rpush": 1, "set": 1})
FANOUT_CHILD = Counter({"get": 1, "evalsha": 1, "hget": 1, "hset": 1, "zadd": 2, "rpush": 1})
FENCE = [Counter(), Counter({"get": 1})]
"""Unfenced (one engine), or fenced by the lease (its GET inside the script)."""
LEASE_TTL = 3600.0  # no lease renewal or takeover scan during a measurement


@dataclass
class Measured:
    """Commands per ``handle_job_result`` call, in order (the last one ends the run)."""

    per_result: list[Counter[str]] = field(default_factory=list)
    submit: Counter[str] = field(default_factory=Counter)
    server_total: Counter[str] | None = None
    server_bytes: int | None = None
    """Bytes the server received over the same calls (``total_net_input_bytes``)."""
    background: Counter[str] = field(default_factory=Counter)
    """Not the result's: the lease keeper's wait for wake-ups (a BLPOP every few seconds),
    and the engine's stall watchdog's read of one id (a ZREVRANGE when an API call has
    waited over a second, which a loaded machine can cause)."""
    """INFO commandstats over all result calls but the last (after it, the run task ends
    in the background: it may release its lease while we read the stats)."""

    def middle(self) -> list[Counter[str]]:
        return self.per_result[:-1]


@asynccontextmanager
async def backends(kind: str, url: str) -> AsyncIterator[tuple[RedisBackends, Any]]:
    """The engine's backends, and an uncounted admin connection (None on fakeredis)."""
    if kind == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        async with connect("fakeredis", client=client) as redis:
            yield redis, None
        return
    async with connect(url) as redis, connect(url) as admin:
        await admin.redis.call("flushall", "", "flushall")
        yield redis, admin


async def server_stats(admin: Any) -> Counter[str]:
    info = await admin.redis.call("stats", "", "info", "commandstats")
    stats = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()})
    for own in ("info", "config|resetstat"):
        stats.pop(own, None)
    return stats


async def received_bytes(admin: Any) -> int:
    info = await admin.redis.call("stats", "", "info", "stats")
    return int(info["total_net_input_bytes"])


async def measure(kind: str, url: str, wf: Workflow, run_input: dict[str, Any],
                  jobs: int) -> Measured:
    """Submit one run of ``wf`` and answer its ``jobs`` jobs one result at a time."""
    out = Measured()
    bus = MemoryBus()
    async with (
        backends(kind, url) as (redis, admin),
        bus.subscribe(SUBJECT_SUBMIT, max_buffer=float("inf")) as requests,
    ):
        await redis.store.save_workflow(wf)
        counter = CommandCounter(redis.redis)
        async with open_engine(redis.store, bus, payloads=redis.payloads,
                               lease_ttl=LEASE_TTL) as engine:
            counter.reset()
            run_id = await engine.submit(wf.id, run_input)
            out.submit = Counter(counter.counts)
            out.background["zrevrange"] += out.submit.pop("zrevrange", 0)  # stall watchdog
            if admin is not None:
                await admin.redis.call("resetstat", "", "config_resetstat")
            for i in range(jobs):
                if i == jobs - 1 and admin is not None:
                    out.server_bytes = await received_bytes(admin)
                    out.server_total = await server_stats(admin)
                await answer(engine, redis, counter, await requests.receive(), out)
            run = await engine.wait_run(run_id)
        counter.close()
    assert run.status == RunStatus.SUCCEEDED, run.error
    return out


async def answer(engine: Engine, redis: RedisBackends, counter: CommandCounter,
                 packet: Any, out: Measured) -> None:
    request = packet.payload
    assert isinstance(request, JobRequest)
    key = result_key(request.job_id)
    # a worker of another process: its own payload store (a store shared with the engine
    # would answer the engine's read of the result itself, without a GET)
    await RedisPayloadStore(redis.redis).put_result(key, b'{"ok": true}')
    before = Counter(counter.counts)
    counter.reset()
    await engine.handle_job_result(JobResult(request.job_id, JobStatus.SUCCEEDED,
                                             result_ptr=pointer_for_key(key)))
    counts = Counter(counter.counts)
    out.background["blpop"] += counts.pop("blpop", 0)
    out.background["zrevrange"] += counts.pop("zrevrange", 0)  # stall watchdog
    out.per_result.append(counts)
    counter.counts = before + counter.counts  # the server saw the put too


def chain(n: int) -> Workflow:
    steps = [Step(id=f"s{i}", topic="job.step", depends_on=[f"s{i - 1}"] if i else [])
             for i in range(n)]
    return Workflow(id="chain", org_id="org-c", steps={s.id: s for s in steps})


def fanout() -> Workflow:
    # a step input of its own: without one every child's input would be the whole run
    # input (the items list), making each child O(n) bytes — the count is the same
    step = Step(id="each", topic="job.item", for_each="input.items", input={"x": "${item}"})
    return Workflow(id="fan", org_id="org-c", steps={"each": step})


Scenario = Callable[[int], Any]


def cross_check(m: Measured) -> None:
    """The server executed exactly what the counter counted over the same calls (the
    counter hears the commands a script runs from the store): the results but the last,
    with the test's SETs of their payloads. But the ``LTRIM`` a script runs once the
    timeline is past its cap: at most one per timeline append."""
    if m.server_total is None:
        return
    counted = sum(m.middle(), Counter())
    counted += Counter({"set": len(m.middle())})
    server = Counter(m.server_total)
    server.pop("blpop", None)
    assert server.pop("ltrim", 0) <= counted["rpush"]
    # the engine's stall watchdog reads one id (ZREVRANGE) when an API call waits over a
    # second, which a loaded machine can cause during the submit; it is not per result
    server.pop("zrevrange", None)
    assert server == counted


def bytes_per_result(m: Measured) -> float:
    """Bytes the server received per result (with the test's payload SET, ~60 bytes)."""
    assert m.server_bytes is not None
    return m.server_bytes / len(m.middle())


def check_per_result(m: Measured, expected: Counter[str]) -> None:
    """Every result but the last costs exactly ``expected`` (plus the fence, if any)."""
    for i, counts in enumerate(m.middle()):
        assert counts in [expected + fence for fence in FENCE], (i, counts)


@pytest.fixture
def url(redis_kind: str, request: pytest.FixtureRequest) -> str:
    if redis_kind == "fakeredis":
        return "fakeredis"
    return str(request.getfixturevalue("redis_server").url)


async def test_commands_per_chain_step_do_not_grow_with_the_chain(
    redis_kind: str, url: str
) -> None:
    seen: dict[int, Measured] = {}
    with trio.fail_after(DEADLINE):
        for n in (5, 50):
            seen[n] = await measure(redis_kind, url, chain(n), {"x": 1}, n)
    for n, m in seen.items():
        assert len(m.per_result) == n
        check_per_result(m, CHAIN_STEP)
        cross_check(m)
    assert_last_result_bounded(seen)
    report("chain step (result + next dispatch)", seen[50])


async def test_commands_per_fanout_child_do_not_grow_with_the_fanout(
    redis_kind: str, url: str
) -> None:
    seen: dict[int, Measured] = {}
    big = 2000 if redis_kind == "redis" else 500  # fakeredis is slow at this size
    with trio.fail_after(DEADLINE):
        for n in (100, big):
            seen[n] = await measure(redis_kind, url, fanout(), {"items": list(range(n))}, n)
    for n, m in seen.items():
        assert len(m.per_result) == n
        check_per_result(m, FANOUT_CHILD)
        cross_check(m)
    assert_last_result_bounded(seen)
    if redis_kind == "redis":  # and the bytes: what a child result sends does not grow
        small, large = (bytes_per_result(seen[n]) for n in (100, big))
        assert large < small * 1.1, (small, large)
        print(f"\n  bytes sent to Redis per child result: {small:.0f} (100 children), "
              f"{large:.0f} ({big} children)")
    # the submit dispatches every child: per child one SET (its input payload), all in
    # the one script of the write that dispatches them
    first, last = seen[100].submit, seen[big].submit
    more = big - 100
    assert last["set"] - first["set"] == more
    assert sum(last.values()) - sum(first.values()) == more, (first, last)
    report("fan-out child result", seen[big])


def round_trips(counts: Counter[str]) -> int:
    """Each command the client sends (a plain GET, the EVALSHA) is one round trip; what
    the script runs is not."""
    return counts["evalsha"] + counts["multi"] + 1


def assert_last_result_bounded(seen: dict[int, Measured]) -> None:
    """The result that ends the run also moves it out of the active indexes (ZREM, SREM),
    and the run task then releases its lease in the background (sometimes before our count
    ends): a small constant too, whatever the run's size."""
    for m in seen.values():
        last = m.per_result[-1]
        assert sum(last.values()) <= sum(m.per_result[0].values()) + 6, last


def report(what: str, m: Measured) -> None:
    per = m.per_result[0]
    print(f"\n{what}: {sum(per.values())} commands in {round_trips(per)} round trips: "
          f"{dict(sorted(per.items()))}")
    print(f"  last result (ends the run): {dict(sorted(m.per_result[-1].items()))}")
    print(f"  submit: {dict(sorted(m.submit.items()))}")
