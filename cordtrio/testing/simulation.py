"""Deterministic simulation: the real engine, workers and backends under seeded faults, in
virtual time, with invariants checked on every event.

``simulate(seed)`` runs, inside ``trio.run(..., clock=MockClock(autojump_threshold=0))``:

* an in-memory store wrapped in a ``FlakyStore`` (transient write failures), a
  ``MemoryBus`` wrapped in a ``FaultyBus`` (drops, duplicates, reorders, delays), a
  ``WorkerPool`` of simulated workers (latency, failures, denials, hangs, crashes);
* the engine (``open_engine``), which is crashed (its scope cancelled) at a random event and
  reopened over the same store (recovery);
* a submitter (with idempotency keys, retrying what fails) and an approver;
* after ``horizon`` virtual seconds every fault stops, and every accepted run must become
  terminal within ``bound`` more virtual seconds.

Everything random comes from ``random.Random`` streams derived from the seed (ids included)
and Trio's scheduler is made deterministic for the duration of the run, so the same seed
gives the same trace, bit for bit (``SimulationReport.trace_hash``).

Invariants (``SimulationFailure.invariant``):

``dependencies``
    No step is dispatched (or even started) before all its ``depends_on`` succeeded; an
    ``on_error`` handler only after a step naming it failed.
``attempts``
    No step or for-each child is attempted more than ``max_retries + 1`` times (stored
    ``attempts``, the ``@n`` of job ids, and distinct job ids sent).
``max_parallel``
    A for-each parent never has more than ``max_parallel`` children running, at any write.
``terminal_stable``
    A run, once stored terminal, never changes again.
``liveness``
    Every accepted run is terminal within ``bound`` virtual seconds after faults stop.
``lost_run``
    Every run whose ``submit`` returned is in the store.
``timeline``
    Each StepRun's final status agrees with the last ``step_*`` timeline event of that step,
    and the run's status with its last ``run_status`` event.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio
import trio.testing

from ..backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from ..clock import TrioWallClock
from ..engine.supervisor import Engine, open_engine
from ..errors import CordtrioError
from ..model import StepRun, StepStatus, StepType, TimelineEvent, Workflow, WorkflowRun
from ..ports import TIMELINE_CAP, RunChanges
from ..protocol import BusPacket, JobCancel, JobRequest, JobResult, SystemAlert
from ..validation import validate_workflow
from ..worker import Handler
from .faults import FaultProfile, open_faulty_bus, resolve_profile
from .generate import WORKER_TOPIC, random_run_input, random_workflow
from .store_faults import FlakyStore
from .workers import SimulatedWorker, WorkerPool

__all__ = [
    "INVARIANTS",
    "SimulationFailure",
    "SimulationReport",
    "run_under_faults",
    "simulate",
]

INVARIANTS = (
    "dependencies", "attempts", "max_parallel", "terminal_stable", "liveness", "lost_run",
    "timeline",
)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
TRACE_TAIL = 30
STORE_FAIL_RATES = {"none": 0.0, "light": 0.05, "heavy": 0.2}
ENGINE_STEP_TYPES = (StepType.CONDITION, StepType.APPROVAL, StepType.DELAY, StepType.NOTIFY)



class SimulationFailure(AssertionError):
    """An invariant was violated. ``seed``, ``invariant`` and ``trace_tail`` say which,
    where and how to reproduce: ``simulate(seed)`` with the same arguments."""

    def __init__(self, seed: int, invariant: str, detail: str, trace_tail: Sequence[str],
                 trace: Sequence[str] = ()):
        self.seed = seed
        self.trace = list(trace)
        self.invariant = invariant
        self.detail = detail
        self.trace_tail = list(trace_tail)
        tail = "\n".join(f"    {line}" for line in self.trace_tail)
        super().__init__(
            f"simulation seed={seed}: invariant '{invariant}' violated: {detail}\n"
            f"  reproduce with simulate({seed}, ...) (same arguments)\n"
            f"  last {len(self.trace_tail)} trace lines:\n{tail}"
        )


@dataclass
class SimulationReport:
    """What a green simulation did."""

    seed: int
    runs: int
    steps_dispatched: int
    faults_injected: dict[str, int]
    virtual_time: float
    real_time: float
    trace_hash: str
    statuses: dict[str, int] = field(default_factory=dict)
    engine_restarts: int = 0
    trace: list[str] = field(repr=False, default_factory=list)

    def __str__(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_injected.items()) if v)
        return (f"seed {self.seed}: {self.runs} runs {self.statuses}, {self.steps_dispatched} "
                f"dispatches, faults [{faults or 'none'}], {self.engine_restarts} engine "
                f"restarts, {self.virtual_time:.1f}s virtual in {self.real_time:.3f}s, "
                f"trace {self.trace_hash[:12]}")


class _Abort(Exception):
    """Internal: an invariant failed; the simulation stops."""


@contextmanager
def _deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make Trio's scheduler order depend only on ``seed`` (the switch Trio's Hypothesis
    plugin uses), restoring the previous setting afterwards."""
    from trio._core import _run

    flag = _run._ALLOW_DETERMINISTIC_SCHEDULING
    state = _run._r.getstate()
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(f"cordtrio-sim:{seed}:scheduler")
    try:
        yield
    finally:
        _run._ALLOW_DETERMINISTIC_SCHEDULING = flag  # type: ignore[misc]
        _run._r.setstate(state)


@contextmanager
def _quiet_logs(quiet: bool) -> Iterator[None]:
    """Silence cordtrio's warnings (every injected store failure logs one); errors stay."""
    logger = logging.getLogger("cordtrio")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _split(target: str) -> str:
    """``step[3]`` → ``step``."""
    if target.endswith("]") and "[" in target:
        base = target[: target.rindex("[")]
        if base and target[len(base) + 1 : -1].isdigit():
            return base
    return target


def _max_attempts(wf: Workflow, target: str) -> int:
    step = wf.steps.get(_split(target)) or wf.steps.get(target)
    if step is None or step.retry is None:
        return 1
    return max(step.retry.max_retries, 0) + 1


def _job_attempt(job_id: str) -> int:
    _, sep, n = job_id.rpartition("@")
    return int(n) if sep and n.isdigit() else 0


def _all_step_runs(run: WorkflowRun) -> Iterator[tuple[str, StepRun]]:
    for sid, sr in run.steps.items():
        yield sid, sr
        for child in sr.children.values():
            yield sid, child


def _stable_dict(run: WorkflowRun) -> dict[str, Any]:
    doc = run.to_dict()
    doc.pop("updated_at", None)
    return doc


def _packet_line(subject: str, packet: BusPacket) -> str:
    p = packet.payload
    if isinstance(p, JobRequest):
        return f"{subject} {p.job_id}"
    if isinstance(p, JobResult):
        return f"{subject} {p.job_id} {p.status.name} by {p.worker_id}"
    if isinstance(p, JobCancel):
        return f"{subject} {p.job_id} ({p.reason})"
    if isinstance(p, SystemAlert):
        return f"{subject} alert {p.code} {p.level}"
    return f"{subject} {type(p).__name__}"


class _Sim:
    """State of one simulation (lives inside ``trio.run``)."""

    def __init__(self, seed: int, workflows: list[Workflow],
                 inputs: Callable[[random.Random, Workflow], dict[str, Any]],
                 runs: int, profile: FaultProfile, worker: SimulatedWorker,
                 handlers: Mapping[str, Handler], store_fail_rate: float, crashes: int,
                 horizon: float, bound: float, workers: int, approve_rate: float) -> None:
        self.seed = seed
        self.workflows = {wf.id: wf for wf in workflows}
        self.handler_ids = {
            wf.id: {s.on_error for s in wf.steps.values() if s.on_error} for wf in workflows
        }
        self.inputs = inputs
        self.runs = runs
        self.profile = profile
        self.worker = worker
        self.user_handlers = dict(handlers)
        self.store_fail_rate = store_fail_rate
        self.horizon = horizon
        self.bound = bound
        self.n_workers = workers
        self.approve_rate = approve_rate

        def stream(name: str) -> random.Random:
            return random.Random(f"cordtrio-sim:{seed}:{name}")

        self.rng = stream("driver")
        self.rng_bus = stream("bus")
        self.rng_store = stream("store")
        self.rng_workers = stream("workers")
        self.rng_ids = stream("ids")
        self.trace: list[str] = []
        self.failure: tuple[str, str] | None = None
        self.root: trio.CancelScope | None = None
        # crash points: trace line counts at which the engine is cancelled
        self.crash_at = sorted(self.rng.randint(5, max(6, 60 * runs)) for _ in range(crashes))
        self.engine: Engine | None = None
        self.engine_scope: trio.CancelScope | None = None
        self.engine_ready = trio.Event()
        self.engine_restarts = 0
        self.faults_on = True
        self._id_seq = 0
        # observations
        self.latest: dict[str, WorkflowRun] = {}  # last stored state per run
        self.terminal: dict[str, dict[str, Any]] = {}  # first terminal snapshot
        self.accepted: dict[str, None] = {}
        self.created: dict[str, None] = {}
        self.sent_jobs: dict[tuple[str, str], dict[str, None]] = {}
        self.dispatches = 0
        self.all_done = trio.Event()
        self.submitting_done = False
        self.store_failures = 0
        self.waiting = trio.Event()  # set when a stored run has a step waiting

    # ------------------------------------------------------------------------ tracing

    def line(self, text: str) -> None:
        self.trace.append(f"{trio.current_time():.6f} {text}")
        if (self.crash_at and len(self.trace) >= self.crash_at[0] and self.faults_on
                and self.engine_scope is not None):
            self.crash_at.pop(0)
            self.trace.append(f"{trio.current_time():.6f} !! engine crash")
            self.engine_scope.cancel()

    def fail(self, invariant: str, detail: str) -> None:
        if self.failure is None:
            self.line(f"!! VIOLATION {invariant}: {detail}")
            self.failure = (invariant, detail)
            if self.root is not None:
                self.root.cancel()

    def new_id(self) -> str:
        self._id_seq += 1
        return f"run-{self._id_seq:03d}-{self.rng_ids.getrandbits(24):06x}"

    # --------------------------------------------------------------------- observers

    def on_saved(self, run: WorkflowRun) -> None:
        """The engine stored ``run`` (the whole state after a batch): check it."""
        rid = run.id
        wf = self.workflows.get(run.workflow_id)
        steps = " ".join(
            f"{sr.step_id}:{sr.status.value}" + (f"@{sr.attempts}" if sr.attempts else "")
            for _, sr in _all_step_runs(run)
        )
        self.line(f"save {rid} {run.status.value} [{steps}]")
        snapshot = _stable_dict(run)
        if rid in self.terminal and snapshot != self.terminal[rid]:
            self.fail("terminal_stable", f"run {rid} was stored "
                      f"{self.terminal[rid]['status']} and then changed (now "
                      f"{run.status.value}, steps [{steps}])")
            return
        if run.status.is_terminal and rid not in self.terminal:
            self.terminal[rid] = snapshot
        self.latest[rid] = WorkflowRun.from_dict(run.to_dict())
        if not run.status.is_terminal and any(
                sr.status == StepStatus.WAITING for sr in run.steps.values()):
            self.waiting.set()
        if wf is None:
            return
        self._check_state(wf, run)
        self._check_done()

    def _check_state(self, wf: Workflow, run: WorkflowRun) -> None:
        handlers = self.handler_ids[wf.id]
        for sid, sr in run.steps.items():
            step = wf.steps.get(sid)
            if step is None:
                continue
            if sid in handlers:
                sources = [s.id for s in wf.steps.values() if s.on_error == sid]
                if not any((src := run.steps.get(s)) is not None and src.status in (
                        StepStatus.FAILED, StepStatus.TIMED_OUT) for s in sources):
                    self.fail("dependencies", f"run {run.id}: handler {sid} started "
                              f"({sr.status.value}) but none of {sources} failed")
            else:
                for dep in step.depends_on:
                    d = run.steps.get(dep)
                    if d is None or d.status != StepStatus.SUCCEEDED:
                        self.fail("dependencies", f"run {run.id}: {sid} is "
                                  f"{sr.status.value} but its dependency {dep} is "
                                  f"{d.status.value if d else 'absent'}")
            if step.max_parallel > 0 and sr.children:
                running = [c.step_id for c in sr.children.values()
                           if c.status == StepStatus.RUNNING]
                if len(running) > step.max_parallel:
                    self.fail("max_parallel", f"run {run.id}: {sid} has {len(running)} "
                              f"children running {running} > max_parallel "
                              f"{step.max_parallel}")
        for _, sr in _all_step_runs(run):
            limit = _max_attempts(wf, sr.step_id)
            if sr.attempts > limit:
                self.fail("attempts", f"run {run.id}: {sr.step_id} has attempts "
                          f"{sr.attempts} > max_retries + 1 = {limit}")

    def on_created(self, run: WorkflowRun) -> None:
        self.created[run.id] = None
        self.line(f"create {run.id} {run.workflow_id}")

    def on_timeline(self, run_id: str, events: Sequence[TimelineEvent]) -> None:
        for e in events:
            self.line(f"tl {run_id} {e.type} {e.step_id} {e.status} {e.job_id} {e.message}"
                      .rstrip())

    def on_dispatched(self, run_id: str, target: str, job_id: str) -> None:
        self.dispatches += 1
        self.line(f"hook dispatched {job_id}")
        run = self.latest.get(run_id)
        wf = self.workflows.get(run.workflow_id) if run is not None else None
        if run is None or wf is None:
            self.fail("dependencies", f"{job_id} dispatched before its run was stored")
            return
        base = _split(target)
        step = wf.steps.get(base)
        if step is None:
            return
        if base not in self.handler_ids[wf.id]:
            for dep in step.depends_on:
                d = run.steps.get(dep)
                if d is None or d.status != StepStatus.SUCCEEDED:
                    self.fail("dependencies", f"{job_id} dispatched while dependency "
                              f"{dep} of {base} is {d.status.value if d else 'absent'}")
        self._count_job(run_id, wf, target, job_id)

    def _count_job(self, run_id: str, wf: Workflow, target: str, job_id: str) -> None:
        jobs = self.sent_jobs.setdefault((run_id, target), {})
        jobs[job_id] = None
        limit = _max_attempts(wf, target)
        if len(jobs) > limit or _job_attempt(job_id) > limit:
            self.fail("attempts", f"run {run_id}: {target} attempted {len(jobs)} times "
                      f"({', '.join(jobs)}) > max_retries + 1 = {limit}")

    def on_finished(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self.line(f"hook finished {run_id}:{step_id} {status.value}")

    def on_packet(self, subject: str, packet: BusPacket) -> None:
        self.line(f"bus {_packet_line(subject, packet)}")
        p = packet.payload
        if isinstance(p, JobRequest):
            run = self.latest.get(p.env.get("run_id", ""))
            wf = self.workflows.get(run.workflow_id) if run is not None else None
            if run is not None and wf is not None:
                self._count_job(run.id, wf, p.env.get("step_id", ""), p.job_id)

    def on_fault(self, kind: str, subject: str, packet: BusPacket) -> None:
        self.line(f"fault {kind} {_packet_line(subject, packet)}")

    def on_store_fail(self, method: str, run_id: str) -> None:
        self.store_failures += 1
        self.line(f"fault store {method} {run_id}")

    def on_worker(self, what: str, detail: str) -> None:
        self.line(f"worker {what} {detail}")

    def _check_done(self) -> None:
        if self.submitting_done and all(
            (r := self.latest.get(rid)) is not None and r.status.is_terminal
            for rid in self.accepted
        ):
            self.all_done.set()


class _ObservedStore(FlakyStore):
    """The simulation's view of the store: every *successful* write is reported."""

    def __init__(self, sim: _Sim, inner: MemoryStore) -> None:
        super().__init__(inner, sim.rng_store, sim.store_fail_rate, on_fail=sim.on_store_fail)
        self.sim = sim

    async def create_run(self, run: WorkflowRun) -> None:
        await super().create_run(run)
        self.sim.on_created(run)

    async def save_run_changes(
        self, run: WorkflowRun, changes: RunChanges, timeline: Sequence[TimelineEvent] = ()
    ) -> None:
        await super().save_run_changes(run, changes, timeline)
        self.sim.on_saved(run)
        if timeline:
            self.sim.on_timeline(run.id, timeline)

    async def append_timeline_events(self, run_id: str, events: Sequence[TimelineEvent]
                                     ) -> None:
        await super().append_timeline_events(run_id, events)
        self.sim.on_timeline(run_id, events)


def _job_topics(workflows: Sequence[Workflow]) -> tuple[str, ...]:
    topics: dict[str, None] = {}
    for wf in workflows:
        for step in wf.steps.values():
            if step.type not in ENGINE_STEP_TYPES:
                topics[step.topic or f"job.workflow.{wf.id}"] = None
    return tuple(topics)


async def _main(sim: _Sim) -> None:
    clock = TrioWallClock(EPOCH)
    inner = MemoryStore(clock=clock)
    store = _ObservedStore(sim, inner)
    payloads = MemoryPayloadStore(ttl_seconds=None)
    bus = MemoryBus()
    for wf in sim.workflows.values():
        await inner.save_workflow(wf)
    topics = _job_topics(list(sim.workflows.values())) or (WORKER_TOPIC,)
    pool = WorkerPool(sim.worker, sim.rng_workers, handlers=sim.user_handlers, topics=topics,
                      workers=sim.n_workers, listener=sim.on_worker)
    t0 = trio.current_time()
    with trio.CancelScope() as root:
        sim.root = root
        async with (
            open_faulty_bus(bus, sim.rng_bus, profile=sim.profile,
                            on_fault=sim.on_fault) as fbus,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_observe_bus, sim, bus)
            await nursery.start(pool.run, fbus, payloads)
            await nursery.start(_engine_loop, sim, store, fbus, payloads, clock)
            nursery.start_soon(_approver, sim)
            await _submitter(sim)
            sim.submitting_done = True
            sim._check_done()
            await trio.sleep_until(t0 + sim.horizon)
            # Faults stop: the system must now converge.
            sim.faults_on = False
            sim.line("-- faults stop")
            fbus.stop()
            store.stop()
            pool.calm()
            if not sim.engine_ready.is_set():
                await sim.engine_ready.wait()
            with trio.move_on_after(sim.bound):
                await sim.all_done.wait()
            if not sim.all_done.is_set():
                stuck = [f"{rid} ({r.status.value if (r := sim.latest.get(rid)) else '?'})"
                         for rid in sim.accepted
                         if not ((r := sim.latest.get(rid)) and r.status.is_terminal)]
                sim.fail("liveness", f"{len(stuck)} run(s) not terminal {sim.bound:g}s "
                         f"after faults stopped: {', '.join(stuck[:10])}{_hint(sim)}")
            else:
                sim.line("-- all runs terminal")
                await _final_checks(sim, inner)
            nursery.cancel_scope.cancel()


def _hint(sim: _Sim) -> str:
    bare = [f"{wf.id}/{s.id}" for wf in sim.workflows.values() for s in wf.steps.values()
            if s.type not in ENGINE_STEP_TYPES and s.timeout_sec <= 0]
    if not bare:
        return ""
    return (f" (hint: job steps without timeout_sec wait forever for a lost request, result "
            f"or a hung/crashed worker: {', '.join(bare[:5])})")


async def _observe_bus(sim: _Sim, bus: MemoryBus, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with bus.subscribe(">", max_buffer=math.inf) as channel:
        task_status.started()
        async for packet in channel:
            # the subject is not in the packet; infer it from the payload type
            p = packet.payload
            subject = ("sys.job.submit" if isinstance(p, JobRequest) else
                       "sys.job.result" if isinstance(p, JobResult) else
                       "sys.job.cancel" if isinstance(p, JobCancel) else "sys.workflow.event")
            sim.on_packet(subject, packet)


async def _engine_loop(sim: _Sim, store: _ObservedStore, bus: Any, payloads: Any,
                       clock: TrioWallClock, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    first = True
    while True:
        with trio.CancelScope() as scope:
            sim.engine_scope = scope
            sim.line("engine open" if first else "engine restart (recovering)")
            async with open_engine(store, bus, payloads=payloads, clock=clock,
                                   new_id=sim.new_id, on_step_dispatched=sim.on_dispatched,
                                   on_step_finished=sim.on_finished) as engine:
                sim.engine = engine
                sim.engine_ready.set()
                if first:
                    first = False
                    task_status.started()
                await trio.sleep_forever()
        sim.engine = None
        sim.engine_scope = None
        sim.engine_ready = trio.Event()
        sim.engine_restarts += 1
        sim.line("engine down")
        await trio.sleep(sim.rng.uniform(0.1, 10.0))


async def _current_engine(sim: _Sim) -> Engine:
    while sim.engine is None:
        await sim.engine_ready.wait()
    return sim.engine


async def _submitter(sim: _Sim) -> None:
    wf_ids = list(sim.workflows)
    for i in range(sim.runs):
        await trio.sleep(sim.rng.uniform(0.0, sim.horizon / max(2 * sim.runs, 1)))
        wf = sim.workflows[sim.rng.choice(wf_ids)]
        payload = sim.inputs(sim.rng, wf)
        key = f"sim-{sim.seed}-{i}"
        tries = 0
        while True:
            tries += 1
            engine = await _current_engine(sim)
            run_id: str | None = None
            with trio.move_on_after(60):
                try:
                    run_id = await engine.submit(wf.id, payload, idempotency_key=key,
                                                 triggered_by="simulation")
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"submit {key} failed: {type(exc).__name__}")
            if run_id is not None:
                sim.accepted[run_id] = None
                sim.line(f"submit {key} accepted {run_id}")
                break
            await trio.sleep(sim.rng.uniform(0.1, 2.0))


async def _approver(sim: _Sim) -> None:
    while True:
        await sim.waiting.wait()
        await trio.sleep(sim.rng.uniform(1.0, 15.0))
        engine = sim.engine
        if engine is None:
            continue
        sim.waiting = trio.Event()
        for rid in list(sim.latest):
            run = sim.latest[rid]
            if run.status.is_terminal:
                continue  # a triggered approval handler waits in a *running* run
            for sid, sr in run.steps.items():
                if sr.status != StepStatus.WAITING:
                    continue
                ok = sim.rng.random() < sim.approve_rate
                sim.line(f"{'approve' if ok else 'reject'} {rid}:{sid}")
                with trio.move_on_after(60):
                    try:
                        await engine.approve_step(rid, sid, ok)
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"approve {rid}:{sid} failed: {type(exc).__name__}")
        if any(not r.status.is_terminal and any(
                sr.status == StepStatus.WAITING for sr in r.steps.values())
               for r in sim.latest.values()):
            sim.waiting.set()  # something is still waiting (e.g. the engine was down)


async def _final_checks(sim: _Sim, inner: MemoryStore) -> None:
    for rid in sim.accepted:
        try:
            run = await inner.get_run(rid)
        except CordtrioError:
            sim.fail("lost_run", f"accepted run {rid} is not in the store")
            return
        if rid in sim.terminal and _stable_dict(run) != sim.terminal[rid]:
            sim.fail("terminal_stable", f"stored run {rid} differs from its first terminal "
                     "snapshot")
            return
        events = await inner.list_timeline_events(rid, TIMELINE_CAP)
        _check_timeline(sim, run, events)


def _check_timeline(sim: _Sim, run: WorkflowRun, events: list[TimelineEvent]) -> None:
    last: dict[str, TimelineEvent] = {}
    run_event: TimelineEvent | None = None
    for e in events:
        if e.type.startswith("step_") and e.step_id and e.status:
            last[e.step_id] = e
        elif e.type == "run_status" and e.status:
            run_event = e
    for _, sr in _all_step_runs(run):
        ev = last.get(sr.step_id)
        said = StepStatus(ev.status) if ev is not None else None
        if said is not None and said.is_terminal and said != sr.status:
            sim.fail("timeline", f"run {run.id}: {sr.step_id} is {sr.status.value} but its "
                     f"last timeline event {ev.type if ev else ''} says {said.value}")
        if sr.status == StepStatus.SUCCEEDED and said != StepStatus.SUCCEEDED:
            sim.fail("timeline", f"run {run.id}: {sr.step_id} succeeded but its last "
                     f"timeline event says {said.value if said else 'nothing'}")
    if run_event is not None and run_event.status != run.status.value:
        sim.fail("timeline", f"run {run.id} is {run.status.value} but its last run_status "
                 f"event says {run_event.status}")


def _default_inputs(rng: random.Random, wf: Workflow) -> dict[str, Any]:
    return random_run_input(rng)


def simulate(
    seed: int,
    *,
    workflows: Sequence[Workflow] | None = None,
    runs: int = 6,
    faults: FaultProfile | str = "light",
    crash: bool | int = True,
    worker: SimulatedWorker | str | None = None,
    handlers: Mapping[str, Handler] | None = None,
    inputs: Callable[[random.Random, Workflow], dict[str, Any]] | None = None,
    store_fail_rate: float | None = None,
    horizon: float = 300.0,
    bound: float = 7 * 86400.0,
    workers: int = 2,
    approve_rate: float = 0.8,
    quiet: bool = True,
) -> SimulationReport:
    """Run one deterministic simulation; raise ``SimulationFailure`` on a violated
    invariant, else return a ``SimulationReport``.

    ``workflows``: the definitions to run (default: one to three ``random_workflow``\\ s
    drawn from the seed). ``runs`` runs are submitted during the first half of ``horizon``
    (virtual seconds), with inputs from ``inputs(rng, workflow)`` (default:
    ``random_run_input``). ``faults`` is a bus ``FaultProfile`` or a preset name (``none``,
    ``light``, ``heavy``); the same name also picks the worker behaviour
    (``SimulatedWorker.preset``) and the store failure rate (0, 5 %, 20 %) unless
    ``worker`` / ``store_fail_rate`` say otherwise. ``crash``: crash and restart the engine
    (True = once, or a number of times) at random events during the horizon. ``handlers``:
    your own handlers by topic, called when a simulated job succeeds. After ``horizon``,
    faults stop and every run must be terminal within ``bound`` virtual seconds.
    ``quiet``: silence cordtrio's log warnings while simulating.
    """
    rng = random.Random(f"cordtrio-sim:{seed}:workflows")
    if workflows is None:
        wfs = [random_workflow(rng, workflow_id=f"wf-{i}") for i in range(rng.randint(1, 3))]
    else:
        wfs = list(workflows)
        if not wfs:
            raise ValueError("simulate(): workflows must not be empty")
        for wf in wfs:
            validate_workflow(wf)
    profile = resolve_profile(faults)
    preset = profile.name if profile.name in STORE_FAIL_RATES else "light"
    if worker is None:
        spec = SimulatedWorker.preset(preset if isinstance(faults, str) or profile.any
                                      else "none")
    elif isinstance(worker, str):
        spec = SimulatedWorker.preset(worker)
    else:
        spec = worker
    fail_rate = STORE_FAIL_RATES.get(preset, 0.0) if store_fail_rate is None else store_fail_rate
    crashes = int(crash) if not isinstance(crash, bool) else (1 if crash else 0)
    sim = _Sim(seed, wfs, inputs or _default_inputs, runs, profile, spec, handlers or {},
               fail_rate, crashes, horizon, bound, workers, approve_rate)
    started = time.perf_counter()
    clock = trio.testing.MockClock(autojump_threshold=0)
    with _deterministic_scheduling(seed), _quiet_logs(quiet):
        trio.run(_main, sim, clock=clock)
    real = time.perf_counter() - started
    if sim.failure is not None:
        invariant, detail = sim.failure
        raise SimulationFailure(seed, invariant, detail, sim.trace[-TRACE_TAIL:], sim.trace)
    digest = hashlib.sha256()
    for line in sim.trace:
        digest.update(line.encode())
        digest.update(b"\n")
    statuses = Counter(sim.latest[rid].status.value for rid in sim.accepted)
    injected = {k: 0 for k in ("drop", "duplicate", "reorder", "delay")}
    injected.update(_count_faults(sim.trace))
    return SimulationReport(
        seed=seed,
        runs=len(sim.accepted),
        steps_dispatched=sim.dispatches,
        faults_injected=injected,
        virtual_time=clock.current_time(),
        real_time=real,
        trace_hash=digest.hexdigest(),
        statuses=dict(sorted(statuses.items())),
        engine_restarts=sim.engine_restarts,
        trace=sim.trace,
    )


def _count_faults(trace: Sequence[str]) -> dict[str, int]:
    """Injected faults by kind, from the trace (bus faults, store failures, worker
    misbehaviour, engine crashes)."""
    counts: Counter[str] = Counter()
    for line in trace:
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[1] == "fault":
            counts["store_failure" if parts[2] == "store" else parts[2]] += 1
        elif len(parts) >= 3 and parts[1] == "worker" and parts[2] in (
                "crash", "hang", "fail", "deny"):
            counts[f"worker_{parts[2]}"] += 1
        elif len(parts) >= 3 and parts[1] == "!!" and parts[2] == "engine":
            counts["engine_crash"] += 1
    return dict(counts)


def run_under_faults(
    workflow: Workflow | Sequence[Workflow],
    handlers: Mapping[str, Handler] | None = None,
    *,
    seed: int = 0,
    faults: FaultProfile | str = "light",
    runs: int = 4,
    inputs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    crash: bool | int = True,
    **options: Any,
) -> SimulationReport:
    """Test *your* workflow: run it ``runs`` times under ``faults`` with your ``handlers``
    (topic → async handler; called when the simulated job succeeds), crash and recover the
    engine, and check every invariant. ``inputs``: one run input, or a list to cycle
    through. Raises ``SimulationFailure`` (with the seed and a trace) on a violation."""
    wfs = [workflow] if isinstance(workflow, Workflow) else list(workflow)
    if inputs is None:
        choices: list[dict[str, Any]] = [{}]
    elif isinstance(inputs, dict):
        choices = [inputs]
    else:
        choices = list(inputs)
    counter = iter(range(1 << 62))

    def pick(rng: random.Random, wf: Workflow) -> dict[str, Any]:
        return dict(choices[next(counter) % len(choices)])

    return simulate(seed, workflows=wfs, handlers=handlers, faults=faults, runs=runs,
                    inputs=pick, crash=crash, **options)
