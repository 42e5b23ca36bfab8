"""Bad input and failing backends (SPEC §5, §6): nothing a worker, a backend or a definition
does wrong may raise out of the engine, stall it, or hold up other runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from test_engine_kit import WF, fail, ok, put_output, step, succeed, timeline_types, workflow

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import open_engine
from cordtrio.errors import NotFoundError, StoreError, ValidationError
from cordtrio.model import RetryConfig, RunStatus, StepStatus, StepType
from cordtrio.protocol import (
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    SUBJECT_WORKFLOW_EVENT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
    SystemAlert,
)
from cordtrio.worker import open_worker


def packet(payload: Any) -> BusPacket:
    return BusPacket("trace", "test", datetime.now(UTC), 1, payload)


async def echo(job: Any) -> dict[str, Any]:
    await trio.sleep(0)
    return {"ok": True}


@pytest.fixture(params=[False, True], ids=["objects", "codec"])
async def bus(request: pytest.FixtureRequest, watchdog: None) -> MemoryBus:
    return MemoryBus(codec=request.param)


# ------------------------------------------------------------------ garbage results


async def test_garbage_results_are_ignored_while_good_runs_complete(
        store, bus, payloads, save, submits, autojump_clock):
    await save(step("a", retry=RetryConfig(max_retries=1)), step("b", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads) as engine:
        victim = await engine.submit(WF)
        await engine.handle_job_result(fail(f"{victim}:a@1"))  # a@2 after a 1 s backoff
        gone = await engine.submit(WF)
        await store.delete_run(gone)
        before = (await store.get_run(victim)).to_dict()

        garbage = [
            JobResult(job_id=""),
            JobResult(job_id="nocolon", status=JobStatus.SUCCEEDED),
            JobResult(job_id="unknown-run:a@1", status=JobStatus.SUCCEEDED),
            JobResult(job_id=f"{gone}:a@1", status=JobStatus.SUCCEEDED),
            JobResult(job_id=f"{victim}:a@1", status=JobStatus.SUCCEEDED),  # stale attempt
            JobResult(job_id=f"{victim}:zzz@1", status=JobStatus.SUCCEEDED),  # unknown step
            JobResult(job_id=f"{victim}:a[3]@1", status=JobStatus.SUCCEEDED),  # no children
            JobResult(job_id=f"{victim}:@1", status=JobStatus.FAILED),
            JobResult(job_id=":a@1", status=JobStatus.FAILED),
            JobResult(job_id=f"{victim}:b@1", status=JobStatus.SUCCEEDED),  # not dispatched
        ]
        for result in garbage:  # handle_job_result never raises for these
            await engine.handle_job_result(result)
        assert (await store.get_run(victim)).to_dict() == before

        # the same garbage, and payloads that are not results, through the bus,
        # while good runs are served by a real worker
        async with open_worker(bus, payloads, {"job.test": echo}):
            good = [await engine.submit(WF) for _ in range(3)]
            for result in garbage:
                await bus.publish(SUBJECT_RESULT, packet(result))
            for other in (JobRequest(job_id=f"{good[0]}:a@1", topic="job.test"),
                          JobCancel(job_id=f"{good[0]}:a@1"), SystemAlert(message="hi")):
                await bus.publish(SUBJECT_RESULT, packet(other))
            with trio.fail_after(5):
                runs = [await engine.wait_run(r) for r in (*good, victim)]
        assert {r.status for r in runs} == {RunStatus.SUCCEEDED}
        assert runs[-1].steps["a"].attempts == 2
    with pytest.raises(NotFoundError):
        await store.get_run(gone)


async def test_result_for_a_run_deleted_while_active_is_ignored(store, bus, payloads, save):
    await save(step("a"))
    async with open_engine(store, bus, payloads=payloads) as engine:
        gone = await engine.submit(WF)
        other = await engine.submit(WF)
        await store.delete_run(gone)  # its task is still active in the engine
        with trio.fail_after(5):
            await succeed(engine, f"{gone}:a@1")  # never raises, never hangs
            await succeed(engine, f"{other}:a@1")
        assert (await store.get_run(other)).status == RunStatus.SUCCEEDED


async def test_wait_run_does_not_hang_when_the_run_is_deleted(store, bus, payloads, save):
    await save(step("a"))
    errors: list[BaseException] = []

    async def waiter(run_id: str) -> None:
        try:
            await engine.wait_run(run_id)
        except NotFoundError as exc:
            errors.append(exc)

    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter, run_id)
                await trio.testing.wait_all_tasks_blocked()
                await store.delete_run(run_id)
                await succeed(engine, f"{run_id}:a@1")  # its task ends; the run is gone
    assert len(errors) == 1


async def test_duplicate_results_are_ignored(engine, store, save, submits):
    await save(step("a"), step("b", depends_on=["a"]))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1", {"n": 1})
    snapshot = (await store.get_run(run_id)).to_dict()
    await engine.handle_job_result(fail(f"{run_id}:a@1"))
    await engine.handle_job_result(ok(f"{run_id}:a@1"))
    assert (await store.get_run(run_id)).to_dict() == snapshot
    assert submits.job_ids == [f"{run_id}:a@1", f"{run_id}:b@1"]


async def test_unexpected_status_fails_the_step(engine, store, save):
    await save(step("a"))
    run_id = await engine.submit(WF)
    await engine.handle_job_result(JobResult(f"{run_id}:a@1", JobStatus.RUNNING))
    run = await store.get_run(run_id)
    assert run.steps["a"].status == StepStatus.FAILED
    assert run.steps["a"].error["message"] == "unexpected status: RUNNING"


# ------------------------------------------------------------------ bad definitions


@pytest.fixture
def unvalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the store accept definitions that save-time validation would reject, as an old
    or hand-written stored definition might be."""
    import cordtrio.backends.memory.store as memory_store

    monkeypatch.setattr(memory_store, "validate_workflow", lambda wf: None)


async def test_input_template_error_fails_the_step_naming_it(
        engine, store, save, submits, unvalidated):
    await store.save_workflow(workflow(step("broken", input={"x": "${length(}"}), id="bad"))
    await save(step("a"))
    bad = await engine.submit("bad")
    good = await engine.submit(WF)
    run = await store.get_run(bad)
    assert run.status == RunStatus.FAILED
    message = run.steps["broken"].error["message"]
    assert "step 'broken'" in message and "input" in message
    assert run.error["step_id"] == "broken"
    assert submits.job_ids == [f"{good}:a@1"]  # nothing published for the broken step
    await succeed(engine, f"{good}:a@1")
    assert (await store.get_run(good)).status == RunStatus.SUCCEEDED


async def test_input_schema_violation_fails_without_publishing(engine, store, save, submits):
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    await save(step("a", input={"n": "${input.n}"}, input_schema=schema))
    bad = await engine.submit(WF, {"n": "seven"})
    run = await store.get_run(bad)
    assert run.status == RunStatus.FAILED
    assert "step 'a' input" in run.steps["a"].error["message"]
    assert submits.payloads == []
    good = await engine.submit(WF, {"n": 7})
    assert submits.job_ids == [f"{good}:a@1"]


async def test_output_schema_violation_fails_the_step(engine, store, save):
    schema = {"type": "object", "required": ["id"]}
    await save(step("a", output_schema=schema))
    bad, good = await engine.submit(WF), await engine.submit(WF)
    await succeed(engine, f"{bad}:a@1", {"nope": 1})
    await succeed(engine, f"{good}:a@1", {"id": 1})
    run = await store.get_run(bad)
    assert run.status == RunStatus.FAILED and run.steps["a"].status == StepStatus.FAILED
    assert "step 'a' output" in run.steps["a"].error["message"]
    assert "step_output_invalid" in await timeline_types(store, bad, "a")
    assert (await store.get_run(good)).status == RunStatus.SUCCEEDED


# ------------------------------------------------------------------ failing backends


class FlakyPayloads(MemoryPayloadStore):
    """``put_context`` fails for the jobs of step ``boom``: a transient outage (a
    connection error) while ``down``, a definite error (``ValidationError``) when
    ``definite``."""

    def __init__(self, *, definite: bool = False) -> None:
        super().__init__(ttl_seconds=None)
        self.down = True
        self.definite = definite
        self.attempts = 0

    async def put_context(self, key: str, data: bytes) -> None:
        if ":boom@" in key:
            self.attempts += 1
            if self.definite:
                raise ValidationError(f"payload {key}: refused")
            if self.down:
                raise ConnectionError("payload store down")
        await super().put_context(key, data)


async def test_a_definite_payload_store_error_fails_the_step(store, bus, submits, save):
    await save(step("boom"), step("fine"))
    async with open_engine(store, bus, payloads=FlakyPayloads(definite=True)) as engine:
        run_id = await engine.submit(WF)
        run = await store.get_run(run_id)
        assert run.steps["boom"].status == StepStatus.FAILED
        assert run.steps["boom"].error["message"].startswith("dispatch failed: ")
        assert "refused" in run.steps["boom"].error["message"]
        assert run.status == RunStatus.FAILED
        assert f"{run_id}:boom@1" not in submits.job_ids  # never published
        await save(step("fine"), id="ok")
        other = await engine.submit("ok")  # the engine keeps serving
        await succeed(engine, f"{other}:fine@1")
        assert (await store.get_run(other)).status == RunStatus.SUCCEEDED


async def test_a_payload_store_outage_is_waited_out(store, bus, submits, save, autojump_clock):
    await save(step("boom"))
    payloads = FlakyPayloads()
    async with open_engine(store, bus, payloads=payloads) as engine, trio.open_nursery() as n:
        n.start_soon(engine.submit, WF)
        await trio.sleep(30)  # the store stays down for 30 s
        assert payloads.attempts > 3
        assert submits.job_ids == []
        payloads.down = False
        await trio.sleep(10)
        (job_id,) = submits.job_ids  # dispatched once the store is back
        run_id = job_id.rpartition(":")[0]
        assert (await store.get_run(run_id)).steps["boom"].status == StepStatus.RUNNING
        await succeed(engine, job_id)
        assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED


class BrokenBus(MemoryBus):
    """Publishing on ``subject`` fails while ``broken``."""

    def __init__(self, subject: str) -> None:
        super().__init__()
        self.subject = subject
        self.broken = True

    async def publish(self, subject: str, packet: BusPacket) -> None:
        if subject == self.subject and self.broken:
            raise OSError("bus unreachable")
        await super().publish(subject, packet)


async def test_bus_failure_on_submit_fails_the_step(store, payloads, save):
    bus = BrokenBus(SUBJECT_SUBMIT)
    finished: list[tuple[str, str, StepStatus]] = []
    dispatched: list[Any] = []
    await save(step("a"))
    async with open_engine(store, bus, payloads=payloads,
                           on_step_dispatched=lambda *a: dispatched.append(a),
                           on_step_finished=lambda *a: finished.append(a)) as engine:
        run_id = await engine.submit(WF)
        run = await store.get_run(run_id)
        assert run.status == RunStatus.FAILED
        assert run.steps["a"].status == StepStatus.FAILED
        assert "bus unreachable" in run.steps["a"].error["message"]
        assert finished == [(run_id, "a", StepStatus.FAILED)] and dispatched == []
        bus.broken = False
        other = await engine.submit(WF)
        await succeed(engine, f"{other}:a@1")
        assert (await store.get_run(other)).status == RunStatus.SUCCEEDED


class EmptyConfig:
    async def effective(self, *_: str) -> dict[str, Any]:
        return {}


async def test_a_failed_job_publish_is_the_same_with_or_without_a_config_provider():
    """A failed job publish fails the step the same way whether a config provider may add
    to the request or there is none."""
    outcomes = []
    for config in (None, EmptyConfig()):
        store, payloads = MemoryStore(), MemoryPayloadStore()
        await store.save_workflow(workflow(step("a")))
        async with open_engine(store, BrokenBus(SUBJECT_SUBMIT), payloads=payloads,
                               config=config, new_id=lambda: "r1") as engine:
            run = await store.get_run(await engine.submit(WF))
        timeline = await store.list_timeline_events(run.id)
        outcomes.append((run.status, run.steps["a"].status, run.steps["a"].error,
                         [(e.type, e.step_id, e.message) for e in timeline]))
    assert outcomes[0] == outcomes[1]
    assert "publish r1:a@1: bus unreachable" in outcomes[0][2]["message"]


async def test_bus_failure_on_notify_fails_the_step(store, payloads, save):
    bus = BrokenBus(SUBJECT_WORKFLOW_EVENT)
    await save(step("tell", type=StepType.NOTIFY, input={"message": "hi"}),
               step("after", depends_on=["tell"]))
    async with open_engine(store, bus, payloads=payloads) as engine:
        run = await store.get_run(await engine.submit(WF))
    assert run.status == RunStatus.FAILED
    assert run.steps["tell"].status == StepStatus.FAILED
    assert "bus unreachable" in run.steps["tell"].error["message"]
    assert "step_event_failed" in await timeline_types(store, run.id, "tell")
    assert "after" not in run.steps


class BrokenConfig:
    async def effective(self, *_: str) -> dict[str, Any]:
        raise RuntimeError("config service down")


async def test_a_failing_config_provider_does_not_block_dispatch(
        store, bus, payloads, save, submits):
    await save(step("a"))
    async with open_engine(store, bus, payloads=payloads, config=BrokenConfig()) as engine:
        run_id = await engine.submit(WF)
    [request] = submits.payloads
    assert request.job_id == f"{run_id}:a@1"
    assert "CORDUM_EFFECTIVE_CONFIG" not in request.env


class BlinkingStore(MemoryStore):
    """``save_run_changes`` fails ``failures`` times (transiently), then works."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures = failures
        self.error = error

    async def save_run_changes(self, run: Any, changes: Any, timeline: Any = ()) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        await super().save_run_changes(run, changes, timeline)


@pytest.mark.parametrize("error", [StoreError("redis blinked"), ConnectionError("reset")])
async def test_transient_store_errors_are_retried(bus, payloads, submits, error, autojump_clock):
    store = BlinkingStore(0, error)
    await store.save_workflow(workflow(step("a"), step("b", depends_on=["a"])))
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
        store.failures = 2  # the next write fails twice
        ptr = await put_output(payloads, f"{run_id}:a@1", {"n": 1})
        await engine.handle_job_result(ok(f"{run_id}:a@1", ptr))
        assert store.failures == 0
        run = await store.get_run(run_id)  # read-your-writes held through the retries
        assert run.steps["a"].status == StepStatus.SUCCEEDED
        assert run.context["steps"]["a"]["output"] == {"n": 1}
        assert submits.job_ids == [f"{run_id}:a@1", f"{run_id}:b@1"]
        store.failures = 2
        await succeed(engine, f"{run_id}:b@1", {"n": 2})
        run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {"b": {"n": 2}}
    types = await timeline_types(store, run_id)
    assert types.count("step_dispatched") == 2 and types.count("step_completed") == 2
