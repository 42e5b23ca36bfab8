"""Simulated workers: handlers with seeded latency, failures, denials, hangs and crashes.

``SimulatedWorker`` describes how a worker behaves; ``WorkerPool`` runs ``n`` workers
(``open_worker``) on a bus with that behaviour, all driven by one ``random.Random``::

    pool = WorkerPool(SimulatedWorker.preset("light"), rng, handlers={"job.t": my_handler})
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run, bus, payloads)

For each job a worker draws one outcome: *crash* (after part of its latency the whole
worker dies: every job it runs is lost without a result, and it restarts after
``restart_delay``), *hang* (never answers; only a ``JobCancel`` ends it), *fail* (raises),
*deny* (raises ``JobDenied``) or *succeed* (after its latency, the user's handler runs, if
any, else ``{"job": job_id, "item": item}`` is returned). ``executions`` counts handler
starts per job id and ``per_step`` per ``(run_id, step_id)``. A job that a crashed worker
was running and that another worker then starts is reported as ``redelivered``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..ports import Bus, PayloadStore
from ..worker import Handler, Job, JobDenied, open_worker

__all__ = ["SimulatedFailure", "SimulatedWorker", "WorkerPool", "simulated_handler"]

WorkerListener = Callable[[str, str], None]
"""Called as ``(what, detail)`` for every worker event (start, crash, hang, restart...)."""


class SimulatedFailure(RuntimeError):
    """What a simulated handler raises for an injected failure."""


def _rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class SimulatedWorker:
    """How a simulated worker behaves. Rates are per job and add up to at most 1."""

    latency: tuple[float, float] = (0.01, 2.0)
    fail_rate: float = 0.0
    deny_rate: float = 0.0
    hang_rate: float = 0.0
    crash_rate: float = 0.0
    restart_delay: tuple[float, float] = (0.5, 5.0)

    def __post_init__(self) -> None:
        for name in ("fail_rate", "deny_rate", "hang_rate", "crash_rate"):
            _rate(name, getattr(self, name))
        total = self.fail_rate + self.deny_rate + self.hang_rate + self.crash_rate
        if total > 1.0:
            raise ValueError(f"worker failure rates add up to {total:g} > 1")
        lo, hi = self.latency
        if lo < 0 or hi < lo:
            raise ValueError(f"latency must be (min, max) with 0 <= min <= max, got "
                             f"{self.latency!r}")

    @classmethod
    def preset(cls, name: str) -> SimulatedWorker:
        """``none`` (always succeeds), ``light`` or ``heavy``."""
        presets = {
            "none": cls(),
            "light": cls(latency=(0.01, 3.0), fail_rate=0.15, deny_rate=0.03,
                         hang_rate=0.02, crash_rate=0.01),
            "heavy": cls(latency=(0.01, 10.0), fail_rate=0.3, deny_rate=0.05,
                         hang_rate=0.05, crash_rate=0.03),
        }
        try:
            return presets[name]
        except KeyError:
            raise ValueError(f"unknown worker preset {name!r}; presets: {sorted(presets)}"
                             ) from None

    def calm(self) -> SimulatedWorker:
        """The same worker without hangs and crashes (failures and denials stay)."""
        return replace(self, hang_rate=0.0, crash_rate=0.0)


def _default_output(job: Job) -> Any:
    return {"job": job.job_id, "item": job.item}


def simulated_handler(
    spec: SimulatedWorker,
    rng: random.Random,
    inner: Handler | None = None,
    *,
    on_crash: Callable[[], None] | None = None,
    listener: WorkerListener | None = None,
) -> Handler:
    """A handler behaving like ``spec``; on success it runs ``inner`` (if given).

    A crash calls ``on_crash`` (which should tear the worker down) and then waits to be
    cancelled; without ``on_crash`` a crash behaves like a hang.
    """

    async def handler(job: Job) -> Any:
        u = rng.random()
        latency = rng.uniform(*spec.latency)
        note = listener or (lambda what, detail: None)
        if u < spec.crash_rate:
            await trio.sleep(latency * rng.random())
            note("crash", job.job_id)
            if on_crash is not None:
                on_crash()
            await trio.sleep_forever()
        u -= spec.crash_rate
        if u < spec.hang_rate:
            budget = job.request.budget
            if (budget is None or budget.deadline_ms <= 0) and on_crash is not None:
                # Without a deadline nothing tells a hung handler from a long job; what
                # the bus can detect is a hung *process* (it stops heartbeating): that is
                # a lost worker, simulated as a crash.
                note("crash", job.job_id)
                on_crash()
            else:
                note("hang", job.job_id)
            await trio.sleep_forever()
        u -= spec.hang_rate
        await trio.sleep(latency)
        if u < spec.fail_rate:
            note("fail", job.job_id)
            raise SimulatedFailure(f"simulated failure of {job.job_id}")
        u -= spec.fail_rate
        if u < spec.deny_rate:
            note("deny", job.job_id)
            raise JobDenied(f"simulated denial of {job.job_id}")
        note("succeed", job.job_id)
        if inner is not None:
            return await inner(job)
        return _default_output(job)

    return handler


class WorkerPool:
    """``workers`` simulated workers in one queue group, serving ``topics``.

    ``handlers`` maps topics to the user's own handlers (called on the success path);
    ``topics`` adds topics served by the default handler. ``calm()`` stops new hangs and
    crashes (e.g. once a simulation's fault horizon is over).
    """

    def __init__(
        self,
        spec: SimulatedWorker,
        rng: random.Random,
        *,
        handlers: Mapping[str, Handler] | None = None,
        topics: tuple[str, ...] = (),
        workers: int = 2,
        max_concurrency: int = 16,
        listener: WorkerListener | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec = spec
        self.workers = workers
        self.max_concurrency = max_concurrency
        self.executions: Counter[str] = Counter()
        self.per_step: Counter[tuple[str, str]] = Counter()
        self.crashes = 0
        self._rng = rng
        self._user = dict(handlers or {})
        self._topics = tuple(dict.fromkeys((*self._user, *topics)))
        if not self._topics:
            raise ValueError("a worker pool needs at least one topic")
        self._listener = listener
        self._lost: set[str] = set()  # jobs of crashed workers, not started again yet

    def calm(self) -> None:
        self.spec = self.spec.calm()

    def _note(self, what: str, detail: str) -> None:
        if self._listener is not None:
            self._listener(what, detail)

    def _handlers(self, scope: trio.CancelScope, name: str) -> dict[str, Handler]:
        running: set[str] = set()  # the jobs this worker runs now

        def crash() -> None:
            if not scope.cancel_called:
                self.crashes += 1
                self._note("worker_crash", name)
                self._lost.update(running)  # the bus hands them to the other workers
                scope.cancel()

        def make(topic: str) -> Handler:
            async def handler(job: Job) -> Any:
                self.executions[job.job_id] += 1
                self.per_step[(job.run_id, job.step_id)] += 1
                if job.job_id in self._lost:
                    self._lost.discard(job.job_id)
                    self._note("redelivered", job.job_id)
                inner = simulated_handler(self.spec, self._rng, self._user.get(topic),
                                          on_crash=crash, listener=self._note)
                running.add(job.job_id)
                try:
                    return await inner(job)
                finally:
                    running.discard(job.job_id)

            return handler

        return {topic: make(topic) for topic in self._topics}

    async def run(self, bus: Bus, payloads: PayloadStore, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started()`` once every worker listens."""
        async with trio.open_nursery() as nursery:
            for i in range(self.workers):
                await nursery.start(self._serve_one, bus, payloads, i)
            task_status.started()

    async def _serve_one(self, bus: Bus, payloads: PayloadStore, index: int, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        generation = 0
        while True:
            generation += 1
            name = f"sim-worker-{index}.{generation}"
            with trio.CancelScope() as scope:
                async with open_worker(bus, payloads, self._handlers(scope, name),
                                       worker_id=name, queue="cordtrio-sim-workers",
                                       max_concurrency=self.max_concurrency):
                    if generation == 1:
                        task_status.started()
                    self._note("worker_up", name)
                    await trio.sleep_forever()
            await trio.sleep(self._rng.uniform(*self.spec.restart_delay))
