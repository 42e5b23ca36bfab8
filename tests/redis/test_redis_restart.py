"""Redis going away under a working engine: a restart mid-run loses and fails
nothing; a server that never comes back gives errors naming the URL, fast.

Real ``redis-server`` processes with an AOF synced on every write, real time (the asyncio
loop's time is Trio's clock: no autojump here), every wait bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import trio

from cordtrio import Job, open_engine, open_worker
from cordtrio.backends.memory import MemoryBus
from cordtrio.backends.redis import RedisBackends, connect
from cordtrio.backends.redis.testing import RedisServer
from cordtrio.errors import CordtrioError
from cordtrio.model import RunStatus, Step, StepStatus, StepType, Workflow

RUNS = 30
DEADLINE = 60  # seconds for the whole scenario; it takes ~3 s
OUTAGE = 1.0  # seconds the server stays down
FAIL_FAST = 6  # seconds an API call may take to report a server that is gone
GATED = Workflow(id="gated", steps={"gate": Step(id="gate", type=StepType.APPROVAL)})


def chain() -> Workflow:
    """fetch → a delay (so runs are in flight) → double (reads fetch's output) → report
    (reads both), with an output path: every output must have been loaded, not guessed."""
    steps = [
        Step(id="fetch", topic="job.fetch"),
        Step(id="pause", type=StepType.DELAY, delay_sec=0.8, depends_on=["fetch"]),
        Step(id="double", topic="job.double", depends_on=["pause"],
             input={"n": "${steps.fetch.output.n}"}),
        Step(id="report", topic="job.report", depends_on=["double"],
             input={"n": "${steps.fetch.output.n}", "twice": "${steps.double.output.value}"},
             output_path="result"),
    ]
    return Workflow(id="chain", org_id="org-r", steps={s.id: s for s in steps})


async def fetch(job: Job) -> dict[str, Any]:
    await trio.sleep(0.03 * job.input["i"])  # spread the runs out over ~1 s
    return {"n": job.input["i"]}


async def double(job: Job) -> dict[str, Any]:
    await trio.sleep(0.05)
    return {"value": job.input["n"] * 2}


async def report(job: Job) -> dict[str, Any]:
    return {"n": job.input["n"], "twice": job.input["twice"]}


HANDLERS = {"job.fetch": fetch, "job.double": double, "job.report": report}


async def stop(server: RedisServer) -> None:
    await trio.to_thread.run_sync(server.stop)


async def start(server: RedisServer) -> None:
    await trio.to_thread.run_sync(server.start)


async def test_runs_survive_a_redis_restart(
    aof_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """30 runs in flight; the server is stopped (SIGTERM) for ~1 s and started again on the
    same port and AOF: every run succeeds with the right outputs, no step failed or was
    attempted twice, and calls really did meet the outage (and waited it out)."""
    caplog.set_level(logging.DEBUG, logger="cordtrio.backends.redis")
    bus = MemoryBus()
    done = Counter[str]()  # steps finished, by step id
    phases: dict[str, int] = {}

    def finished(run_id: str, step_id: str, status: StepStatus) -> None:
        done[step_id] += 1

    with trio.fail_after(DEADLINE):
        async with connect(aof_server.url, connect_timeout=2) as redis:
            await redis.store.save_workflow(chain())
            async with (
                open_worker(bus, redis.payloads, HANDLERS, max_concurrency=8),
                open_engine(redis.store, bus, payloads=redis.payloads,
                            schemas=redis.schemas, on_step_finished=finished) as engine,
            ):
                ids = [await engine.submit("chain", {"i": i}) for i in range(RUNS)]
                while done["fetch"] < RUNS // 2:
                    await trio.sleep(0.01)
                await stop(aof_server)
                phases["fetched at stop"] = done["fetch"]
                phases["reported at stop"] = done["report"]
                await trio.sleep(OUTAGE)
                await start(aof_server)
                runs = [await engine.wait_run(rid) for rid in ids]
                assert engine.active_runs == 0

            # the outage hit runs in flight: none had finished its last step
            assert phases["reported at stop"] == 0, phases
            for i, run in enumerate(runs):
                assert run.status == RunStatus.SUCCEEDED, (run.id, run.error)
                assert run.context["result"] == {"n": i, "twice": 2 * i}
                for sid, sr in run.steps.items():
                    assert sr.status == StepStatus.SUCCEEDED, (run.id, sid, sr.error)
                    assert sr.attempts <= 1, (run.id, sid, sr.attempts)
                stored = await redis.store.get_run(run.id)
                assert stored.to_dict() == run.to_dict()
                events = await redis.store.list_timeline_events(run.id, limit=1000)
                assert not [e for e in events if e.status == "failed"], run.id
                dispatched = [e.step_id for e in events if e.type == "step_dispatched"]
                assert dispatched == ["fetch", "double", "report"], (run.id, dispatched)
            assert await redis.store.count_active_runs("org-r") == 0
            assert sorted(await redis.store.list_run_ids_by_status("succeeded")) == sorted(ids)
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost, "no call met the outage: the test proves nothing"
    assert all(aof_server.url in m for m in lost)


# ---------------------------------------------------------------- a server that is gone


@pytest.fixture
async def gone(aof_server: RedisServer) -> Any:
    """Backends connected to a server (the test stops it for good), with a workflow stored
    while it was up."""
    async with connect(aof_server.url, connect_timeout=2) as redis:
        await redis.store.save_workflow(chain())
        yield redis, aof_server


async def test_api_calls_fail_fast_naming_the_url_when_redis_is_gone(gone: Any) -> None:
    redis, server = gone
    redis: RedisBackends
    bus = MemoryBus()
    await redis.store.save_workflow(GATED)
    async with open_engine(redis.store, bus, payloads=redis.payloads,
                           schemas=redis.schemas) as engine:
        waiting = [await engine.submit("gated") for _ in range(2)]  # active, at their gate
        await stop(server)
        calls = {
            # through the run's task, which retries its write for as long as it takes:
            "approve_step": lambda: engine.approve_step(waiting[0], "gate"),
            "cancel_run": lambda: engine.cancel_run(waiting[1]),
            "submit": lambda: engine.submit("chain", {"i": 1}),
            "wait_run": lambda: engine.wait_run("some-run"),
            "rerun_from": lambda: engine.rerun_from("some-run"),
            "get_run": lambda: redis.store.get_run("some-run"),
            "list_runs": lambda: redis.store.list_runs(),
            "put payload": lambda: redis.payloads.put_context("ctx:x", b"{}"),
            "schema": lambda: redis.schemas.get("s"),
        }
        failures: dict[str, str] = {}

        async def check(name: str, call: Any) -> None:
            with trio.fail_after(FAIL_FAST), pytest.raises(CordtrioError) as info:
                await call()
            failures[name] = str(info.value)

        async with trio.open_nursery() as nursery:  # all at once: each waits 3-4 s
            for name, call in calls.items():
                nursery.start_soon(check, name, call)
        assert set(failures) == set(calls)
        for name, message in failures.items():
            assert server.url in message, (name, message)
            assert "no connection for 3s" in message, (name, message)


async def test_connect_to_a_stopped_server_fails_fast(aof_server: RedisServer) -> None:
    await stop(aof_server)
    with trio.fail_after(FAIL_FAST), pytest.raises(CordtrioError, match=aof_server.url):
        async with connect(aof_server.url, connect_timeout=2):
            pass  # pragma: no cover


async def test_the_aof_brings_the_data_back(aof_server: RedisServer) -> None:
    """The helper's restart really is the same server: what was written survives."""
    async with connect(aof_server.url, connect_timeout=2) as redis:
        await redis.store.save_workflow(chain())
        await stop(aof_server)
        await start(aof_server)
        with trio.fail_after(FAIL_FAST):
            assert (await redis.store.get_workflow("chain")).id == "chain"


# ------------------------------------------------------------- connect errors, masked


async def test_a_refused_connection_names_the_url_with_the_password_masked() -> None:
    from cordtrio.backends.redis.testing import free_port

    port = free_port()
    for url, shown in [
        (f"redis://:Top-Secret@127.0.0.1:{port}/0", f"redis://:***@127.0.0.1:{port}/0"),
        (f"redis://127.0.0.1:{port}/0?password=Top-Secret",
         f"redis://127.0.0.1:{port}/0?password=***"),
    ]:
        with trio.fail_after(FAIL_FAST), pytest.raises(CordtrioError) as info:
            async with connect(url, connect_timeout=2):
                pass  # pragma: no cover
        assert shown in str(info.value) and "Top-Secret" not in str(info.value)


async def test_a_wrong_password_is_not_waited_out(redis_password_server: RedisServer) -> None:
    """An auth failure is definite: it is not retried like a lost connection (fails in
    well under the reconnect window), and the query-string password is masked too."""
    server = redis_password_server
    url = f"redis://{server.host}:{server.port}/0?password=Not-It"
    start_at = trio.current_time()
    with trio.fail_after(FAIL_FAST), pytest.raises(CordtrioError) as info:
        async with connect(url):
            pass  # pragma: no cover
    assert trio.current_time() - start_at < 1
    assert f"{server.host}:{server.port}/0?password=***" in str(info.value)
    assert "Not-It" not in str(info.value)


async def test_a_lost_connection_within_the_window_is_waited_out_not_reported(
    aof_server: RedisServer,
) -> None:
    """One call that meets a stopped server succeeds once it is back (adapter level)."""
    async with connect(aof_server.url, connect_timeout=2, reconnect_timeout=10) as redis:
        await redis.payloads.put_result("res:j", b"1")
        await stop(aof_server)
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await redis.payloads.get_result("res:j"))

            nursery.start_soon(read)
            await trio.sleep(0.5)
            assert not got
            await start(aof_server)
        assert got == [b"1"]
