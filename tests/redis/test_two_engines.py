"""Two engines, one real Redis server: runs submitted across both are each driven
by exactly one engine at a time — no attempt (job id) is ever dispatched twice — and all
complete; results are load-balanced across the engines (queue group), so many reach the
engine that does not own their run and are forwarded through Redis. A crashed engine's runs
are taken over once its leases expire.

Real time (MockClock autojump cannot drive real Redis I/O), short leases, bounded waits.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from cordtrio import Job, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends, connect
from cordtrio.backends.redis.testing import RedisServer
from cordtrio.client import Client
from cordtrio.engine.supervisor import Engine
from cordtrio.model import RunStatus, Step, StepType, Workflow

RUNS = 100
LEASE_TTL = 1.0  # seconds; renewed every third of it
DEADLINE = 60.0
CRASH_TTL = 3.0  # the crash test's leases: long enough to look while they still hold

WORKFLOW = Workflow(id="two", name="two engines", steps={
    "a": Step(id="a", topic="job.two", input={"n": "${input.n}"}),
    "each": Step(id="each", topic="job.two", depends_on=["a"], for_each="input.items",
                 max_parallel=2),
    "b": Step(id="b", topic="job.two", depends_on=["each"]),
})


async def handler(job: Job) -> dict[str, Any]:
    await trio.sleep(0.001)
    return {"ok": True}


async def start_engine(nursery: trio.Nursery, url: str, bus: MemoryBus, name: str,
                       dispatched: Counter[str], owners: dict[str, set[str]],
                       forwarded: Counter[str] | None = None, lease_ttl: float = LEASE_TTL,
                       ) -> tuple[Engine, trio.CancelScope, RedisBackends]:
    """An engine with its own Redis connection, in a task the test can cancel."""
    got: list[tuple[Engine, trio.CancelScope, RedisBackends]] = []
    opened = trio.Event()

    def on_dispatched(run_id: str, step_id: str, job_id: str) -> None:
        dispatched[job_id] += 1
        owners.setdefault(run_id, set()).add(name)

    async def serve() -> None:
        with trio.CancelScope() as scope:
            async with connect(url) as redis:
                if forwarded is not None:
                    push = redis.store.push_command

                    async def counted(run_id: str, data: bytes) -> str | None:
                        forwarded[name] += 1
                        return await push(run_id, data)

                    redis.store.push_command = counted  # type: ignore[method-assign]
                async with open_engine(
                    redis.store, bus, payloads=redis.payloads, engine_id=name,
                    lease_ttl=lease_ttl, on_step_dispatched=on_dispatched) as engine:
                    got.append((engine, scope, redis))
                    opened.set()
                    await trio.sleep_forever()

    nursery.start_soon(serve)
    await opened.wait()
    return got[0]


async def test_two_engines_share_one_redis(redis_server: RedisServer) -> None:
    url = redis_server.url
    bus = MemoryBus()
    dispatched: Counter[str] = Counter()
    owners: dict[str, set[str]] = {}
    forwarded: Counter[str] = Counter()
    async with connect(url) as admin:
        await admin.redis.call("flushall", "", "flushall")
        await admin.store.save_workflow(WORKFLOW)
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery, \
                    open_worker(bus, admin.payloads, {"job.two": handler}, max_concurrency=32):
                a, _, _ = await start_engine(nursery, url, bus, "A", dispatched, owners,
                                             forwarded)
                b, _, _ = await start_engine(nursery, url, bus, "B", dispatched, owners,
                                             forwarded)
                ids = [await (a if i % 2 else b).submit("two", {"n": i, "items": [1, 2, 3]})
                       for i in range(RUNS)]
                runs = [await admin.store.get_run(r) for r in ids]
                while any(not r.status.is_terminal for r in runs):
                    await trio.sleep(0.05)
                    runs = [await admin.store.get_run(r) for r in ids]
                nursery.cancel_scope.cancel()
        forwarded_left = await admin.store.runs_with_commands()
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * RUNS
    assert [job for job, n in dispatched.items() if n > 1] == []
    assert len(dispatched) == RUNS * 5  # a, three children, b
    assert all(len(who) == 1 for who in owners.values())  # no run changed hands here
    assert {name for who in owners.values() for name in who} == {"A", "B"}
    assert forwarded_left == []
    assert forwarded["A"] > 0 and forwarded["B"] > 0  # results reached the other engine


async def test_a_crashed_engines_runs_move_after_the_lease_ttl(
        redis_server: RedisServer) -> None:
    url = redis_server.url
    bus = MemoryBus()
    gate = Workflow(id="gate", name="gate", steps={
        "ok": Step(id="ok", type=StepType.APPROVAL),
        "after": Step(id="after", topic="job.two", depends_on=["ok"]),
    })
    dispatched: Counter[str] = Counter()
    owners: dict[str, set[str]] = {}
    async with connect(url) as admin:
        await admin.redis.call("flushall", "", "flushall")
        await admin.store.save_workflow(gate)
        client = Client(admin.store)
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery, \
                    open_worker(bus, admin.payloads, {"job.two": handler}):
                a, a_scope, _ = await start_engine(nursery, url, bus, "A", dispatched, owners,
                                                   lease_ttl=CRASH_TTL)
                ids = [await a.submit("gate") for _ in range(5)]
                assert a.leases is not None
                a.leases.crash()
                a_scope.cancel()
                crashed_at = trio.current_time()
                await start_engine(nursery, url, bus, "B", dispatched, owners,
                                   lease_ttl=CRASH_TTL)
                for run_id in ids:
                    await client.approve_step(run_id, "ok")  # queued for A...
                # ...and nobody applies them while A's leases live (B must not steal them):
                await trio.sleep_until(crashed_at + CRASH_TTL * 0.5)
                checked_after = trio.current_time() - crashed_at
                early = [(await admin.store.get_run(r)).status for r in ids]
                runs = [await client.wait_run(r, poll_interval=0.05) for r in ids]
                nursery.cancel_scope.cancel()
    assert checked_after < CRASH_TTL  # else the check below proves nothing
    assert early == [RunStatus.WAITING] * 5
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 5  # ...applied by B
    assert all(owners[r] == {"B"} for r in ids)  # "after" was dispatched by B alone
    assert [job for job, n in dispatched.items() if n > 1] == []
