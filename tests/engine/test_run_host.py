"""A run task needs nothing of the engine but its ``RunHost``: driven here by a small host of
the test's own, over the single-engine ownership strategy."""

from __future__ import annotations

from typing import Any

import trio
from test_engine_kit import create_pending_run, ok, step, workflow

from cordtrio.backends.memory import MemoryBus, MemoryStore
from cordtrio.clock import TrioWallClock
from cordtrio.core.events import ResultReceived, Start
from cordtrio.core.plan import Plan
from cordtrio.engine.envelopes import Envelope, Finish, Reply
from cordtrio.engine.host import RunHost
from cordtrio.engine.ownership import SingleEngine
from cordtrio.engine.run_task import RunTask
from cordtrio.engine.timers import Alarm
from cordtrio.model import RunStatus, StepStatus, Workflow, WorkflowRun


class Host:
    """A ``RunHost`` with no engine behind it: it records what the task tells it."""

    def __init__(self, store: MemoryStore, bus: MemoryBus) -> None:
        self.store = store
        self.bus = bus
        self.payloads = None
        self.config = None
        self.clock = TrioWallClock()
        self.tasks: dict[str, RunTask] = {}
        self.ownership = SingleEngine(store, self)
        self.alarm = Alarm()
        self.told: list[tuple[Any, ...]] = []

    def deliver(self, run_id: str, envelope: Envelope) -> None:
        self.tasks[run_id].mailbox.put(envelope)

    def is_active(self, run_id: str) -> bool:
        return run_id in self.tasks

    async def load_run(self, run_id: str) -> WorkflowRun:
        return await self.store.get_run(run_id)

    async def mark_unreadable(self, run_id: str, error: Exception) -> bool:
        return False

    async def plan_for(self, workflow_id: str, workflow: Workflow | None = None) -> Plan:
        return Plan.build(await self.store.get_workflow(workflow_id))

    def on_step_dispatched(self, run_id: str, step_id: str, job_id: str) -> None:
        self.told.append(("dispatched", job_id))

    def on_step_finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self.told.append(("finished", step_id, status))

    def run_finished(self, run_id: str) -> Finish | None:
        self.told.append(("run finished", run_id))
        return None

    def run_exited(self, task: object) -> None:
        self.told.append(("exited",))


async def test_a_run_task_runs_a_run_for_a_host_of_its_own() -> None:
    store, bus = MemoryStore(), MemoryBus()
    await store.save_workflow(workflow(step("a")))
    await create_pending_run(store, "r1")
    host = Host(store, bus)
    checked: RunHost = host  # the host satisfies the protocol (mypy checks this line)
    assert checked is host
    task = host.tasks["r1"] = RunTask(host, "r1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        started = Envelope(Start(), done=Reply())
        host.deliver("r1", started)
        await started.done.wait()  # type: ignore[union-attr]
        assert host.told == [("dispatched", "r1:a@1")]
        host.deliver("r1", Envelope(ResultReceived(ok("r1:a@1"))))
    run = await store.get_run("r1")
    assert run.status == RunStatus.SUCCEEDED
    assert host.told[1:] == [("finished", "a", StepStatus.SUCCEEDED), ("run finished", "r1"),
                             ("exited",)]
