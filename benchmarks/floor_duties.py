"""The floor doing a W1 step's duties the leanest way: ``drive_floor_duties``.

``benchmarks.floor`` is the bare shape of W1 (a task per run, a worker pool, a dict store);
``benchmarks.floor_core`` carries cordtrio's own parts. This module sits between them: the
floor's shell doing, with plain slotted objects and no engine, what SPEC asks of every step
of a chain of plain jobs with a payload store, so that cordtrio's distance to it is the
cost of its own structure rather than of the duties:

* engine, on a result: split the job id at its last ``@`` and ``:``, find the step, check
  the attempt is the current one and running; read the result at its ``res:`` pointer (a
  copy); the step ``succeeded`` with ``attempts``, ``completed_at`` and ``output``; the
  output under ``ctx.steps``; a ``step_completed`` timeline row; the ``on_step_finished``
  hook; the dependents whose dependencies all succeeded start; when none is left the run
  ``succeeded`` with a ``run_status`` row;
* starting a job: its input (a copy of the run's input) stored at ``ctx:<job>`` as an
  immutable snapshot with a TTL; a job request with SPEC's fields (``env``, ``labels``,
  ``memory_id``...) in a packet with its ``created_at``; the step ``running``; a
  ``step_dispatched`` row with ``data.context_ptr``; the ``on_step_dispatched`` hook; the
  job held until acknowledged;
* every change written to the store as a copy (the run's header, each changed step, the
  new ``ctx.steps`` entry, the timeline rows), never the live objects, before the jobs go;
* worker: take the job, read its input (a copy), run the no-op handler, store its result
  at ``res:<job>``, answer in a packet, acknowledge.

With ``design=True`` it is shaped as cordtrio is besides (a cancel scope per run task, the
worker pool grown as jobs need it): the smallest program of cordtrio's design doing them.

It knows W1's workflow by heart (a chain, no conditions, no templates, no retries, no
cancellation, no timers, no recovery, one engine) and skips every check a well-formed run
never fails: what cordtrio does beyond it is generality and safety; what it costs beyond
it is how cordtrio is built. ``python -m benchmarks.floor --compare`` measures it beside
the floor and cordtrio.
"""

from __future__ import annotations

import gc
import marshal
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from cordtrio.engine.gc_tuning import long_lived_gc

from .floor_program import WORKERS, _Mailbox, _Signal, submit_many
from .workloads import CHAIN_STEPS

TTL_SECONDS = 24 * 3600.0
_POINTER = "redis://"
_dumps, _loads = marshal.dumps, marshal.loads
_ORDER = [f"s{i}" for i in range(CHAIN_STEPS)]
_DEPENDENTS = {sid: _ORDER[i + 1:i + 2] for i, sid in enumerate(_ORDER)}
_DEPENDS_ON = {sid: _ORDER[max(i - 1, 0):i] for i, sid in enumerate(_ORDER)}


class _Payloads:
    """Snapshots by key with a TTL on Trio's clock (expiry order kept for purging)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.expires: dict[str, float] = {}
        self.expiry_order: deque[tuple[float, str]] = deque()

    def put(self, key: str, value: Any, now: float) -> None:
        expires = now + TTL_SECONDS
        self.data[key] = _dumps(value, 2)
        self.expires[key] = expires
        self.expiry_order.append((expires, key))

    def get(self, pointer: str, now: float) -> Any:
        key = pointer[len(_POINTER):]
        if self.expires[key] <= now:
            raise KeyError(f"payload {key!r} expired")
        return _loads(self.data[key])


class _Step:
    __slots__ = ("attempts", "completed_at", "input", "job_id", "output", "started_at",
                 "status")

    def __init__(self, job_id: str, now: datetime, payload: dict[str, Any]) -> None:
        self.status = "running"
        self.started_at = now
        self.completed_at: datetime | None = None
        self.attempts = 1
        self.job_id = job_id
        self.output: str | None = None
        self.input = payload


class _Run:
    __slots__ = ("ctx_steps", "id", "input", "mailbox", "status", "steps", "updated_at",
                 "workflow_id")

    def __init__(self, run_id: str, workflow_id: str, now: datetime) -> None:
        self.id = run_id
        self.workflow_id = workflow_id
        self.status = "pending"
        self.updated_at = now
        self.steps: dict[str, _Step] = {}
        self.ctx_steps: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.mailbox = _Mailbox()


class _Request:
    __slots__ = ("context_ptr", "env", "job_id", "labels", "memory_id", "priority",
                 "reply_to", "topic", "workflow_id")

    def __init__(self, job_id: str, topic: str, context_ptr: str, env: dict[str, str],
                 labels: dict[str, str], memory_id: str, workflow_id: str,
                 reply_to: _Mailbox) -> None:
        self.job_id = job_id
        self.topic = topic
        self.priority = "batch"
        self.context_ptr = context_ptr
        self.env = env
        self.labels = labels
        self.memory_id = memory_id
        self.workflow_id = workflow_id
        self.reply_to = reply_to


class _Result:
    __slots__ = ("execution_ms", "job_id", "result_ptr", "status", "worker_id")

    def __init__(self, job_id: str, status: str, result_ptr: str, worker_id: str,
                 execution_ms: int) -> None:
        self.job_id = job_id
        self.status = status
        self.result_ptr = result_ptr
        self.worker_id = worker_id
        self.execution_ms = execution_ms


class _Packet:
    __slots__ = ("created_at", "payload", "sender_id", "trace_id")

    def __init__(self, trace_id: str, sender_id: str, created_at: datetime,
                 payload: Any) -> None:
        self.trace_id = trace_id
        self.sender_id = sender_id
        self.created_at = created_at
        self.payload = payload


class _Store:
    """Committed copies: run headers, steps, ``ctx.steps`` entries, timeline rows."""

    def __init__(self) -> None:
        self.headers: dict[str, tuple[str, datetime]] = {}
        self.steps: dict[str, dict[str, tuple[Any, ...]]] = {}
        self.context: dict[str, dict[str, bytes]] = {}
        self.timelines: dict[str, list[tuple[Any, ...]]] = {}

    def create(self, run: _Run) -> None:
        self.headers[run.id] = (run.status, run.updated_at)
        self.steps[run.id] = {}
        self.context[run.id] = {}
        self.timelines[run.id] = []

    def write(self, run: _Run, changed: list[str], output_of: str | None,
              rows: list[tuple[Any, ...]]) -> None:
        self.headers[run.id] = (run.status, run.updated_at)
        steps = self.steps[run.id]
        for sid in changed:
            s = run.steps[sid]
            steps[sid] = (s.status, s.started_at, s.completed_at, s.attempts, s.job_id,
                          s.output, _dumps(s.input, 2))
        if output_of is not None:
            self.context[run.id][output_of] = _dumps(run.ctx_steps[output_of], 2)
        self.timelines[run.id].extend(rows)


Hook = Callable[..., None]


class _FloorDuties:
    def __init__(self, run_tasks: trio.Nursery, dispatched: Hook, finished: Hook,
                 workers: trio.Nursery | None = None) -> None:
        """``workers``: the pool is grown there as jobs need it (``design``)."""
        self.workers = workers
        self.started_workers = 0
        self.waiting_workers = 0
        self.store = _Store()
        self.payloads = _Payloads()
        self.finished: dict[str, _Signal] = {}
        self.unacked: dict[str, _Packet] = {}
        self.send, self.receive = trio.open_memory_channel[_Packet](math.inf)
        self.run_tasks = run_tasks
        self.on_dispatched, self.on_finished = dispatched, finished
        self.ids = 0

    async def submit(self) -> str:
        return await self._submit(self.run)

    async def submit_scoped(self) -> str:
        return await self._submit(self.scoped_run)

    async def _submit(self, task: Callable[[_Run, _Signal], Awaitable[None]]) -> str:
        self.ids += 1
        run = _Run(f"run-{self.ids}", "bench-w1", datetime.now(UTC))
        self.store.create(run)
        self.finished[run.id] = _Signal()
        started = _Signal()
        self.run_tasks.start_soon(task, run, started)
        await started.wait()
        return run.id

    async def wait_run(self, run_id: str) -> str:
        finished = self.finished.get(run_id)
        if finished is not None:
            await finished.wait()
        return self.store.headers[run_id][0]

    def start_job(self, run: _Run, sid: str, now: float, at: datetime,
                  rows: list[tuple[Any, ...]]) -> _Packet:
        job_id = f"{run.id}:{sid}@1"
        payload = dict(run.input)
        key = "ctx:" + job_id
        self.payloads.put(key, payload, now)
        pointer = _POINTER + key
        memory_id = "run:" + run.id
        env = {"workflow_id": run.workflow_id, "run_id": run.id, "step_id": sid,
               "tenant_id": "", "team_id": "", "memory_id": memory_id, "context_mode": "raw"}
        labels = {"workflow_id": run.workflow_id, "run_id": run.id, "step_id": sid}
        request = _Request(job_id, "bench.noop", pointer, env, labels, memory_id,
                           run.workflow_id, run.mailbox)
        run.steps[sid] = _Step(job_id, at, payload)
        rows.append((at, "step_dispatched", sid, job_id, "running", {"context_ptr": pointer}))
        return _Packet(run.id, "workflow-engine", at, request)

    def send_jobs(self, run: _Run, packets: list[_Packet]) -> None:
        """After the write: each job held until acknowledged, sent, its hook called."""
        for packet in packets:
            job_id = packet.payload.job_id
            self.unacked[job_id] = packet
            self.send.send_nowait(packet)
            self.on_dispatched(run.id, packet.payload.env["step_id"], job_id)

    async def scoped_run(self, run: _Run, started: _Signal) -> None:
        """``run`` in a cancel scope of its own: the run's cancellation, as the engine's
        run tasks have it (``design``)."""
        with trio.CancelScope():
            await self.run(run, started)

    def grow(self) -> None:
        """One more worker when a worker took a job while none other waits (``design``)."""
        if self.workers is not None and self.waiting_workers == 0 \
                and self.started_workers < WORKERS:
            self.started_workers += 1
            self.workers.start_soon(self.worker, f"worker-{self.started_workers}")

    async def run(self, run: _Run, started: _Signal) -> None:
        """One run's task: start the roots, then fold each result in (SPEC §5, §6, §8)."""
        now = trio.current_time()
        at = datetime.now(UTC)
        run.status, run.updated_at = "running", at
        rows: list[tuple[Any, ...]] = [(at, "run_status", "", "", "running", {})]
        packets = [self.start_job(run, _ORDER[0], now, at, rows)]
        self.store.write(run, [_ORDER[0]], None, rows)
        self.send_jobs(run, packets)
        started.set()
        while run.status == "running":
            result: _Result = (await run.mailbox.get()).payload
            now = trio.current_time()
            at = datetime.now(UTC)
            head, _, attempt = result.job_id.rpartition("@")
            run_id, _, target = head.rpartition(":")
            step = run.steps.get(target)
            if (run_id != run.id or step is None or step.job_id != result.job_id
                    or step.status != "running"):
                continue
            output = self.payloads.get(result.result_ptr, now)
            step.attempts = max(step.attempts, int(attempt))
            step.status, step.completed_at, step.output = "succeeded", at, result.result_ptr
            run.ctx_steps[target] = {"result_ptr": result.result_ptr, "output": output}
            rows = [(at, "step_completed", target, result.job_id, "succeeded", {})]
            changed, packets = [target], []
            for sid in _DEPENDENTS[target]:
                if all(d in run.steps and run.steps[d].status == "succeeded"
                       for d in _DEPENDS_ON[sid]):
                    packets.append(self.start_job(run, sid, now, at, rows))
                    changed.append(sid)
            if len(run.steps) == CHAIN_STEPS and all(
                    s.status == "succeeded" for s in run.steps.values()):
                run.status = "succeeded"
                rows.append((at, "run_status", "", "", "succeeded", {}))
            run.updated_at = at
            self.store.write(run, changed, target, rows)
            self.on_finished(run.id, target, "succeeded")  # after the write, as SPEC's hooks
            self.send_jobs(run, packets)
        self.finished.pop(run.id).set()

    async def worker(self, worker_id: str) -> None:
        """Take a job, read its input, run the no-op, store the result, answer, ack."""
        jobs, payloads, unacked = self.receive, self.payloads, self.unacked
        while True:
            try:
                packet = jobs.receive_nowait()
            except trio.WouldBlock:
                self.waiting_workers += 1
                try:
                    packet = await jobs.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self.waiting_workers -= 1
            except trio.EndOfChannel:
                return
            self.grow()
            request: _Request = packet.payload
            if request.job_id not in unacked:
                continue
            started = trio.current_time()
            data = payloads.get(request.context_ptr, started)
            output = await _noop(data)
            key = "res:" + request.job_id
            now = trio.current_time()
            payloads.put(key, output, now)
            result = _Result(request.job_id, "succeeded", _POINTER + key, worker_id,
                             int((now - started) * 1000))
            request.reply_to.put(_Packet(packet.trace_id, worker_id, datetime.now(UTC),
                                         result))
            del unacked[request.job_id]  # acknowledged once the result is handed over


async def _noop(data: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def drive_floor_duties(runs: int, *, design: bool = False) -> dict[str, float]:
    """One drive in W1's shape (as ``floor.drive_floor``) doing every step's duties, with
    latency hooks like the harness's and the engine's garbage-collector tuning. Returns
    steps/s (wall clock), CPU µs per step and how many workers ran.

    ``design``: shaped as cordtrio is as well — each run task in a cancel scope of its own
    (the design's: a run's cancel scope is its cancellation), and the worker pool grown as
    jobs need it (as a cordtrio worker starts its slots) instead of started whole: the
    smallest program of cordtrio's design doing W1's duties."""
    gc.collect()
    sent: dict[tuple[str, str], float] = {}
    latencies: list[float] = []

    def dispatched(run_id: str, step_id: str, job_id: str) -> None:
        sent[(run_id, step_id)] = time.perf_counter()

    def finished(run_id: str, step_id: str, status: object) -> None:
        t = sent.pop((run_id, step_id), None)
        if t is not None:
            latencies.append(time.perf_counter() - t)

    with long_lived_gc():
        async with trio.open_nursery() as workers, trio.open_nursery() as run_tasks:
            floor = _FloorDuties(run_tasks, dispatched, finished,
                                 workers if design else None)
            if design:
                floor.grow()
            else:
                for i in range(WORKERS):
                    workers.start_soon(floor.worker, f"worker-{i}")
                floor.started_workers = WORKERS
            await trio.lowlevel.checkpoint()  # the pool is waiting for jobs
            wall, cpu = time.perf_counter(), time.process_time()
            submit = floor.submit_scoped if design else floor.submit
            for run_id in await submit_many(submit, runs):
                status = await floor.wait_run(run_id)
                if status != "succeeded":
                    raise RuntimeError(f"run {run_id} ended {status}")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            floor.send.close()
    total = runs * CHAIN_STEPS
    if len(latencies) != total:
        raise RuntimeError(f"{len(latencies)} steps finished, expected {total}")
    return {"steps": total, "seconds": wall, "steps_per_s": total / wall,
            "cpu_us_per_step": 1e6 * cpu / total, "workers": floor.started_workers}


__all__ = ["drive_floor_duties"]
