"""The engine's public API (API.md "Engine"): read-your-writes, commands, submit, hooks."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import trio
from test_engine_kit import (
    WF,
    create_pending_run,
    fail,
    ok,
    put_output,
    step,
    succeed,
    timeline_types,
)

from cordtrio.backends.memory import MemoryBus, MemoryStore
from cordtrio.core.plan import SENDER_ID
from cordtrio.engine import open_engine
from cordtrio.errors import InvalidStateError, NotFoundError, ValidationError
from cordtrio.model import RunStatus, StepStatus, StepType
from cordtrio.protocol import (
    PROTOCOL_VERSION,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
)

# ------------------------------------------------------------------ read-your-writes


async def test_handle_job_result_is_read_your_writes(store, bus, payloads, save):
    await save(step("a"), step("b", depends_on=["a"], input={"got": "${steps.a.output.n}"}))
    async with (
        bus.subscribe(SUBJECT_SUBMIT) as jobs,  # no worker: results are driven by hand
        open_engine(store, bus, payloads=payloads) as engine,
    ):
        run_id = await engine.submit(WF, {"k": 1})
        first = jobs.receive_nowait().payload  # already on the bus when submit returned
        assert first.job_id == f"{run_id}:a@1"
        assert (await store.get_run(run_id)).steps["a"].status == StepStatus.RUNNING

        ptr = await put_output(payloads, first.job_id, {"n": 7})
        await engine.handle_job_result(ok(first.job_id, ptr))

        run = await store.get_run(run_id)  # no waiting: the change is persisted
        assert run.steps["a"].status == StepStatus.SUCCEEDED
        assert run.context["steps"]["a"]["output"] == {"n": 7}
        assert run.steps["b"].status == StepStatus.RUNNING
        nxt = jobs.receive_nowait().payload  # and the next job has been handed to the bus
        assert isinstance(nxt, JobRequest) and nxt.job_id == f"{run_id}:b@1"
        assert run.steps["b"].input == {"got": 7}
        assert "step_dispatched" in await timeline_types(store, run_id, "b")


async def test_a_job_goes_out_in_the_packet_its_init_would_make(store, payloads, save):
    """The run task makes a job's packet with its fields set one by one
    (``RunTask._after_write``): every field is set, as ``BusPacket(...)`` sets it."""

    class Recording(MemoryBus):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[BusPacket] = []

        async def publish(self, subject: str, packet: BusPacket) -> None:
            if subject == SUBJECT_SUBMIT:
                self.sent.append(packet)
            await super().publish(subject, packet)

    await save(step("a"))
    bus = Recording()
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF, {"k": 1})
    [packet] = bus.sent
    assert isinstance(packet.created_at, datetime) and packet.payload.job_id == f"{run_id}:a@1"
    assert packet == BusPacket(run_id, SENDER_ID, packet.created_at, PROTOCOL_VERSION,
                               packet.payload)


def test_a_job_published_at_once_goes_out_in_the_packet_its_init_would_make() -> None:
    """``effects.packets_now`` (a bus that publishes at once but takes no bare request)
    makes a job's packet with its fields set one by one, as ``request_packet`` and
    ``BusPacket(...)`` make it; and says what ``publish_now`` says."""
    from cordtrio.engine.effects import packets_now, request_packet

    sent: list[tuple[str, BusPacket]] = []
    answers = [True, False]

    def publish_now(subject: str, packet: BusPacket) -> bool:
        sent.append((subject, packet))
        return answers.pop(0)

    submit_now = packets_now(publish_now)
    request = JobRequest(job_id="r:a@1", topic="job.a")
    now = datetime(2024, 1, 2, 3, 4, 5)
    assert submit_now(request, "r", now, SENDER_ID) is True
    assert submit_now(request, "r", now, SENDER_ID) is False
    expected = BusPacket("r", SENDER_ID, now, PROTOCOL_VERSION, request)
    assert sent == [(SUBJECT_SUBMIT, expected)] * 2
    assert request_packet(now, "r", request) == expected


# ------------------------------------------------------------------ start_run


async def test_start_run_missing_workflow_or_run(engine, store, save):
    await save(step("a"))
    await create_pending_run(store, "r-orphan", workflow_id="nope")
    with pytest.raises(NotFoundError):
        await engine.start_run("nope", "r-orphan")
    with pytest.raises(NotFoundError):
        await engine.start_run(WF, "no-such-run")


async def test_start_run_starts_a_created_run(engine, store, save, submits):
    await save(step("a"))
    await create_pending_run(store, "r1")
    await engine.start_run(WF, "r1")
    assert (await store.get_run("r1")).status == RunStatus.RUNNING
    assert submits.job_ids == ["r1:a@1"]


async def test_start_run_on_terminal_run_is_a_no_op(engine, store, save, submits):
    await save(step("a"))
    run_id = await engine.submit(WF)
    await succeed(engine, f"{run_id}:a@1")
    before = await store.get_run(run_id)
    assert before.status == RunStatus.SUCCEEDED
    await engine.start_run(WF, run_id)
    after = await store.get_run(run_id)
    assert after.to_dict() == before.to_dict()
    assert submits.job_ids == [f"{run_id}:a@1"]


# ------------------------------------------------------------------ approve_step


async def test_approve_step_errors(engine, save):
    await save(step("ok", type=StepType.APPROVAL), step("w", depends_on=["ok"]))
    run_id = await engine.submit(WF)
    with pytest.raises(NotFoundError):
        await engine.approve_step("no-such-run", "ok")
    with pytest.raises(NotFoundError):
        await engine.approve_step(run_id, "no-such-step")
    with pytest.raises(InvalidStateError):
        await engine.approve_step(run_id, "w")  # not started, so not waiting
    await engine.approve_step(run_id, "ok")
    with pytest.raises(InvalidStateError):
        await engine.approve_step(run_id, "ok")  # already approved


async def test_approve_and_reject(engine, store, save, submits):
    await save(step("gate", type=StepType.APPROVAL), step("w", depends_on=["gate"]))
    yes, no = await engine.submit(WF), await engine.submit(WF)
    assert (await store.get_run(yes)).status == RunStatus.WAITING
    await engine.approve_step(yes, "gate")
    run = await store.get_run(yes)
    assert run.status == RunStatus.RUNNING and run.steps["w"].status == StepStatus.RUNNING
    assert submits.job_ids == [f"{yes}:w@1"]
    await engine.approve_step(no, "gate", approved=False)
    run = await store.get_run(no)
    assert run.status == RunStatus.FAILED and run.steps["gate"].status == StepStatus.FAILED
    assert "step_rejected" in await timeline_types(store, no)


# ------------------------------------------------------------------ cancel_run


async def test_cancel_run_cancels_every_running_job(engine, store, save, submits, cancels):
    await save(step("a"), step("fan", for_each="input.items"), step("c", depends_on=["a"]))
    run_id = await engine.submit(WF, {"items": [1, 2, 3]})
    running = {f"{run_id}:a@1", *(f"{run_id}:fan[{i}]@1" for i in range(3))}
    assert set(submits.job_ids) == running

    await engine.cancel_run(run_id)

    sent = cancels.payloads  # handed to the bus by the time cancel_run returned
    assert all(isinstance(c, JobCancel) for c in sent)
    assert sorted(c.job_id for c in sent) == sorted(running)
    assert {(c.reason, c.requested_by) for c in sent} == {
        ("workflow run cancelled", "workflow-engine")}
    run = await store.get_run(run_id)
    assert run.status == RunStatus.CANCELLED and run.completed_at is not None
    assert run.steps["a"].status == StepStatus.CANCELLED
    assert {c.status for c in run.steps["fan"].children.values()} == {StepStatus.CANCELLED}
    assert "c" not in run.steps
    assert engine.active_runs == 0

    await engine.cancel_run(run_id)  # cancelling a terminal run changes nothing
    assert len(cancels.payloads) == len(running)
    await succeed(engine, f"{run_id}:a@1")  # a late result is ignored
    assert (await store.get_run(run_id)).to_dict() == run.to_dict()


async def test_cancel_run_missing_raises(engine):
    with pytest.raises(NotFoundError):
        await engine.cancel_run("no-such-run")


async def test_cancel_kills_pending_timers(engine, store, save, submits, autojump_clock):
    await save(step("wait", type=StepType.DELAY, delay_sec=3600),
               step("after", depends_on=["wait"]))
    run_id = await engine.submit(WF)
    await trio.sleep(60)
    run = await store.get_run(run_id)
    assert run.steps["wait"].status == StepStatus.RUNNING and engine.active_runs == 1
    await engine.cancel_run(run_id)
    assert engine.active_runs == 0  # the run's task, and its timers with it, are gone
    await trio.sleep(2 * 3600)
    run = await store.get_run(run_id)
    assert run.status == RunStatus.CANCELLED
    assert run.steps["wait"].status == StepStatus.CANCELLED
    assert submits.job_ids == []
    assert "step_delay_completed" not in await timeline_types(store, run_id)
    assert engine.active_runs == 0


# ------------------------------------------------------------------ rerun_from


async def test_rerun_from_creates_a_pending_run(engine, store, save, submits):
    await save(step("a"), step("b", depends_on=["a"]))
    old = await engine.submit(WF, {"x": 1})
    await succeed(engine, f"{old}:a@1", {"v": 1})
    await succeed(engine, f"{old}:b@1", {"v": 2})
    seen = len(submits.payloads)

    new = await engine.rerun_from(old, "b")
    run = await store.get_run(new)
    assert new != old and run.status == RunStatus.PENDING and run.started_at is None
    assert run.rerun_of == old and run.rerun_step == "b" and run.input == {"x": 1}
    assert set(run.steps) == {"a"} and set(run.context["steps"]) == {"a"}
    assert submits.new(seen) == [] and engine.active_runs == 0

    await engine.start_run(WF, new)  # it starts when asked: only b is dispatched
    assert [p.job_id for p in submits.new(seen)] == [f"{new}:b@1"]


async def test_rerun_from_errors(engine, save):
    await save(step("a"), step("b", depends_on=["a"]))
    run_id = await engine.submit(WF)
    with pytest.raises(NotFoundError):
        await engine.rerun_from("no-such-run")
    with pytest.raises(NotFoundError):
        await engine.rerun_from(run_id, "zzz")
    with pytest.raises(InvalidStateError, match="dependency a not succeeded"):
        await engine.rerun_from(run_id, "b")


# ------------------------------------------------------------------ submit


async def test_submit_validates_input_against_input_schema(engine, store, save, submits):
    schema = {"type": "object", "required": ["user"],
              "properties": {"user": {"type": "string"}}}
    await save(step("a"), input_schema=schema)
    with pytest.raises(ValidationError, match=WF):
        await engine.submit(WF, {"user": 42})
    with pytest.raises(ValidationError, match=WF):
        await engine.submit(WF, {})
    assert await store.list_runs_by_workflow(WF) == []
    assert submits.payloads == []
    run_id = await engine.submit(WF, {"user": "ada"})
    assert (await store.get_run(run_id)).status == RunStatus.RUNNING


async def test_submit_missing_workflow(engine):
    with pytest.raises(NotFoundError):
        await engine.submit("nope")


async def test_submit_idempotency_key_creates_one_run(engine, store, save, submits):
    await save(step("a"))
    first = await engine.submit(WF, {"n": 1}, idempotency_key="key-1")
    again = await engine.submit(WF, {"n": 2}, idempotency_key="key-1")
    assert again == first
    assert [r.id for r in await store.list_runs_by_workflow(WF)] == [first]
    assert submits.job_ids == [f"{first}:a@1"]
    other = await engine.submit(WF, idempotency_key="key-2")
    assert other != first


async def test_submit_sets_run_fields(engine, store, save, submits):
    await save(step("a"))
    run_id = await engine.submit(WF, {"n": 1}, org_id="o2", team_id="t2", labels={"l": "v"},
                                 dry_run=True, triggered_by="tester")
    run = await store.get_run(run_id)
    assert (run.org_id, run.team_id, run.triggered_by) == ("o2", "t2", "tester")
    assert run.labels == {"l": "v", "dry_run": "true"} and run.dry_run
    request = submits.payloads[0]
    assert request.env["dry_run"] == "true" and request.tenant_id == "o2"


# ------------------------------------------------------------------ hooks, config, ids


async def test_hooks_are_called(store, bus, payloads, save, submits):
    dispatched: list[tuple[str, str, str]] = []
    finished: list[tuple[str, str, StepStatus]] = []
    await save(step("a"), step("fan", for_each="input.items", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads,
                           on_step_dispatched=lambda *a: dispatched.append(a),
                           on_step_finished=lambda *a: finished.append(a)) as engine:
        r = await engine.submit(WF, {"items": ["x"]})
        assert dispatched == [(r, "a", f"{r}:a@1")]
        await succeed(engine, f"{r}:a@1")
        assert finished == [(r, "a", StepStatus.SUCCEEDED)]
        assert dispatched[-1] == (r, "fan[0]", f"{r}:fan[0]@1")
        await engine.handle_job_result(fail(f"{r}:fan[0]@1"))
    assert finished[1:] == [(r, "fan[0]", StepStatus.FAILED), (r, "fan", StepStatus.FAILED)]


async def test_a_batch_is_carried_out_in_the_cores_order_after_its_timeline_is_written(
        store, bus, payloads, save, submits):
    """The effects after the commit (the hooks, the job requests) come in the order the core
    gave them, the timeline rows among them written with the run and handled once."""
    calls: list[tuple[Any, ...]] = []
    await save(step("a"), step("b", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads,
                           on_step_dispatched=lambda *a: calls.append(("dispatched", *a)),
                           on_step_finished=lambda *a: calls.append(("finished", *a))
                           ) as engine:
        r = await engine.submit(WF)
        await succeed(engine, f"{r}:a@1")
        assert calls == [("dispatched", r, "a", f"{r}:a@1"),
                         ("finished", r, "a", StepStatus.SUCCEEDED),
                         ("dispatched", r, "b", f"{r}:b@1")]
        assert submits.job_ids == [f"{r}:a@1", f"{r}:b@1"]
        types = await timeline_types(store, r)
        assert types.count("step_completed") == 1 and types.count("step_dispatched") == 2


async def test_a_raising_hook_does_not_break_the_run(store, bus, payloads, save):
    def boom(*_: Any) -> None:
        raise RuntimeError("hook bug")

    await save(step("a"), step("b", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads, on_step_dispatched=boom,
                           on_step_finished=boom) as engine:
        r = await engine.submit(WF)
        await succeed(engine, f"{r}:a@1")
        await succeed(engine, f"{r}:b@1")
        assert (await engine.wait_run(r)).status == RunStatus.SUCCEEDED


class Config:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    async def effective(self, org: str, team: str, wf: str, step_id: str) -> dict[str, Any]:
        self.calls.append((org, team, wf, step_id))
        return {"model": "m1", "limits": {"n": 3}} if step_id == "a" else {}


async def test_config_provider_lands_in_env(store, bus, payloads, save, submits):
    config = Config()
    await save(step("a"), step("b", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads, config=config) as engine:
        r = await engine.submit(WF)
        await succeed(engine, f"{r}:a@1")
    a, b = submits.payloads
    assert json.loads(a.env["CORDUM_EFFECTIVE_CONFIG"]) == {"model": "m1", "limits": {"n": 3}}
    assert "CORDUM_EFFECTIVE_CONFIG" not in b.env  # an empty config adds nothing
    assert config.calls == [("org1", "team1", WF, "a"), ("org1", "team1", WF, "b")]


async def test_new_id_makes_run_ids(store: MemoryStore, bus, payloads, save):
    ids = iter(["run-1", "run-2"])
    await save(step("a"), step("b", depends_on=["a"]))
    async with open_engine(store, bus, payloads=payloads, new_id=lambda: next(ids)) as engine:
        assert await engine.submit(WF) == "run-1"
        await succeed(engine, "run-1:a@1")
        await succeed(engine, "run-1:b@1")
        assert await engine.rerun_from("run-1") == "run-2"
    assert (await store.get_run("run-2")).rerun_of == "run-1"


async def test_errors_leave_the_engine_block_unwrapped(store, bus):
    with pytest.raises(NotFoundError):  # not an ExceptionGroup from the engine's nursery
        async with open_engine(store, bus) as engine:
            await engine.approve_step("no-such-run", "x")


async def test_a_closed_engine_refuses_calls_instead_of_hanging(store, bus, payloads, save):
    await save(step("a"))
    async with open_engine(store, bus, payloads=payloads) as engine:
        run_id = await engine.submit(WF)
    for _ in range(2):  # the first refusal must not leave a dead task behind for the run
        with pytest.raises(RuntimeError):
            await engine.approve_step(run_id, "a")
    assert engine.active_runs == 0
