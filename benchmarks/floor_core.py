"""The floor carrying cordtrio's own parts: ``drive_floor_core`` (``benchmarks.floor``).

The floor's shell (``benchmarks.floor``: one task per run, a pool of worker tasks over a
memory channel, a result put straight into the run's mailbox, no schedule point that
nothing waits for) doing what a W1 step needs done: the pure core's ``decide`` folds every
event into the run, each change is written to the real ``MemoryStore`` (state and timeline,
``save_run_changes_now``), each job's input is put in the real ``MemoryPayloadStore`` at its
``ctx:`` key and read there by the worker, whose result goes to its ``res:`` key and is
read back for the core (SPEC §8), with the engine's garbage-collector tuning on. The store
and payload calls are the plain, non-awaited ones cordtrio's engine and worker make on
in-process backends (``MemoryStore.writes_now``, ``json_payloads.path_for``'s ``*_now``
calls), so this measures what the parts cost cordtrio as it runs them.

No bus, no job queues, no acknowledgements, no envelopes, no hooks, no timers, no
cancellation, no retries of store calls, no ``wait_run`` hand-over: what cordtrio costs
above *this* is the shell around its parts; what this costs above the floor is the parts
themselves (core, store, payloads). ``--compare`` measures the three side by side.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import trio

from backends.memory import MemoryPayloadStore, MemoryStore
from cordtrio import json_payloads
from cordtrio.clock import TrioWallClock
from cordtrio.core.events import (
    Dispatch,
    Event,
    LoadedOutput,
    ResultReceived,
    Start,
)
from cordtrio.core.machine import decide
from cordtrio.core.plan import MAX_INLINE_OUTPUT_BYTES, Plan
from cordtrio.core.state import RunState
from cordtrio.engine.gc_tuning import long_lived_gc
from cordtrio.engine.submission import random_run_id
from cordtrio.json_payloads import StorePath
from cordtrio.model import RunStatus, TimelineEvent, WorkflowRun
from cordtrio.payloads import POINTER_SCHEME, RESULT_PREFIX
from cordtrio.protocol import JobRequest, JobResult, JobStatus

from .floor_program import WORKERS, _Mailbox, _Signal, submit_many
from .switches import TaskSteps
from .workloads import CHAIN_STEPS, WORKLOADS


class _Job:
    __slots__ = ("payload", "reply_to", "request")

    def __init__(self, request: JobRequest, payload: Any, reply_to: _Mailbox) -> None:
        self.request = request
        self.payload = payload  # the input itself when the drive has no payload store
        self.reply_to = reply_to


_OUTPUT = {"ok": True}  # the no-op handler's result (benchmarks.workloads.noop)


async def _worker(jobs: trio.MemoryReceiveChannel[_Job], path: StorePath | None) -> None:
    """Take a job, read its input, run the no-op, store its result, answer the run (the
    result's value itself when there is no payload store). The payload calls are the ones
    cordtrio's worker makes on an in-process store: ``json_payloads.path_for``'s plain
    calls, not awaited (``MemoryPayloadStore.calls_now``)."""
    read_now = path.context_at_now if path is not None else None
    put_now = path.put_result_now if path is not None else None
    encode = path.encode if path is not None else None
    while True:
        try:
            job = jobs.receive_nowait()
        except trio.WouldBlock:
            try:
                job = await jobs.receive()
            except trio.EndOfChannel:
                return
        except trio.EndOfChannel:
            return
        request = job.request
        if read_now is None or put_now is None or encode is None:
            job.reply_to.put((JobResult(request.job_id, JobStatus.SUCCEEDED), dict(_OUTPUT)))
            continue
        read_now(request.context_ptr).value()  # the handler's input, decoded
        key = RESULT_PREFIX + request.job_id
        put_now(key, encode(dict(_OUTPUT), False))  # a result: not compact
        job.reply_to.put((JobResult(request.job_id, JobStatus.SUCCEEDED,
                                    result_ptr=POINTER_SCHEME + key), None))


class _FloorCore:
    """The parts, the job channel and the run tasks' nursery of one drive. Without a
    store a run is kept as the core's own object; without a payload store job inputs and
    results are handed over as values."""

    def __init__(self, run_tasks: trio.Nursery, plan: Plan, store: MemoryStore | None,
                 payloads: MemoryPayloadStore | None) -> None:
        self.run_tasks = run_tasks
        self.plan = plan
        self.store = store
        self.payloads = payloads
        # the in-process calls cordtrio's engine and worker make (not awaited)
        self.path = json_payloads.path_for(payloads) if payloads is not None else None
        if self.path is not None and self.path.put_context_now is None:
            raise RuntimeError("the payload store offers no plain (non-awaited) calls")
        self.clock = TrioWallClock()
        self.runs: dict[str, WorkflowRun] = {}  # without a store
        self.finished: dict[str, _Signal] = {}
        self.send, self.receive = trio.open_memory_channel[_Job](math.inf)

    async def submit(self) -> str:
        """Create the run (in the store), start its task, return once it started the run."""
        now = self.clock.now()
        run = WorkflowRun(id=random_run_id(), workflow_id=self.plan.workflow.id, input={},
                          status=RunStatus.PENDING, created_at=now, updated_at=now)
        if self.store is not None:
            await self.store.create_run(run)
        else:
            self.runs[run.id] = run
        self.finished[run.id] = _Signal()
        started = _Signal()
        self.run_tasks.start_soon(self.run, run, started)
        await started.wait()
        return run.id

    async def wait_run(self, run_id: str) -> WorkflowRun:
        finished = self.finished.get(run_id)
        if finished is not None:
            await finished.wait()
        if self.store is None:
            return self.runs[run_id]
        return await self.store.get_run(run_id)

    async def run(self, run: WorkflowRun, started: _Signal | None) -> None:
        """One run's task: decide, store job inputs, write the changes, send the jobs. The
        store and payload calls are the plain ones cordtrio's engine makes on in-process
        backends (``MemoryStore.save_run_changes_now``, ``StorePath.put_context_now`` and
        ``result_at_now``), not awaited."""
        plan, state, mailbox = self.plan, RunState(run), _Mailbox()
        store, path = self.store, self.path
        save_now = store.save_run_changes_now if store is not None else None
        event: Event = Start()
        while True:
            outcome = decide(plan, state, event, self.clock.now())
            timeline: list[TimelineEvent] = outcome.rows
            jobs: list[_Job] = []
            for effect in outcome.effects:
                if isinstance(effect, Dispatch):
                    if path is None or path.put_context_now is None:
                        jobs.append(_Job(effect.request, effect.payload, mailbox))
                        continue
                    path.put_context_now(effect.context_key, path.encode(effect.payload, True))
                    jobs.append(_Job(effect.request, None, mailbox))
            if save_now is not None:
                save_now(state.run, outcome.changes, timeline)
            for job in jobs:
                self.send.send_nowait(job)
            if started is not None:
                started.set()
                started = None
            if state.run.status.is_terminal:
                break
            result, value = await mailbox.get()
            if path is not None and path.result_at_now is not None:
                data = path.result_at_now(result.result_ptr)
                output = LoadedOutput(value=data.value_or_text(),
                                      too_large=data.too_large(MAX_INLINE_OUTPUT_BYTES))
            else:
                output = LoadedOutput(value=value)
            event = ResultReceived(result, output)
        self.finished.pop(run.id).set()


async def drive_floor_core(runs: int, steps: int = CHAIN_STEPS, *, store: bool = True,
                           payloads: bool = True,
                           count_switches: bool = True) -> dict[str, float | None]:
    """One drive in W1's shape (as ``floor.drive_floor``) through cordtrio's core and,
    unless turned off, its memory store and payload store. Returns steps/s, CPU µs and
    task switches per step (None without ``count_switches``, as ``drive_floor``)."""
    if steps != CHAIN_STEPS:
        raise ValueError(f"the W1 workflow has {CHAIN_STEPS} steps")
    gc.collect()
    workflow = WORKLOADS["w1"].workflow()
    runs_store = MemoryStore()
    await runs_store.save_workflow(workflow)
    plan = Plan.build(await runs_store.get_workflow(workflow.id),
                      has_payload_store=payloads)
    switches = TaskSteps() if count_switches else None
    with long_lived_gc():
        async with trio.open_nursery() as workers, trio.open_nursery() as run_tasks:
            floor = _FloorCore(run_tasks, plan, runs_store if store else None,
                               MemoryPayloadStore() if payloads else None)
            for _ in range(WORKERS):
                workers.start_soon(_worker, floor.receive, floor.path)
            await trio.lowlevel.checkpoint()  # the pool is waiting for jobs
            if switches is not None:
                trio.lowlevel.add_instrument(switches)
            wall, cpu = time.perf_counter(), time.process_time()
            for run_id in await submit_many(floor.submit, runs):
                run = await floor.wait_run(run_id)
                if run.status != RunStatus.SUCCEEDED:
                    raise RuntimeError(f"run {run_id} ended {run.status.value}")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if switches is not None:
                trio.lowlevel.remove_instrument(switches)
            floor.send.close()
    total = runs * steps
    return {"steps": total, "seconds": wall, "steps_per_s": total / wall,
            "cpu_us_per_step": 1e6 * cpu / total,
            "task_switches_per_step": switches.steps / total if switches else None}


__all__ = ["drive_floor_core"]
