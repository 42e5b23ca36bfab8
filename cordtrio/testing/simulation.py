"""Deterministic simulation: the real engine, workers and backends under seeded faults, in
virtual time, with invariants checked on every event.

``simulate(seed)`` runs, inside ``trio.run(..., clock=MockClock(autojump_threshold=0))``
(see ``cordtrio.testing.scenario``):

* a store (``MemoryStore``, or the Redis store over ``fakeredis``) wrapped in a
  ``FlakyStore`` (transient write failures), a ``MemoryBus`` wrapped in a ``FaultyBus``
  (drops, duplicates, reorders, delays), a ``WorkerPool`` of simulated workers (latency,
  failures, denials, hangs, crashes);
* the engine (``open_engine``; or several, ``engines=``), which is crashed (its scope
  cancelled, its handles cut) at virtual times drawn from the seed and reopened over the
  same store (recovery; over a store
  with run leases, another engine takes the run over once the dead engine's lease expires);
* a submitter (with idempotency keys, retrying what fails) and an approver;
* after ``horizon`` virtual seconds every fault stops, and every accepted run must become
  terminal within ``bound`` more virtual seconds.

Everything random comes from ``random.Random`` streams derived from the seed (ids included)
and Trio's scheduler is made deterministic for the duration of the run, so the same seed
gives the same trace, bit for bit (``SimulationReport.trace_hash``). The invariants are
listed in ``cordtrio.testing.invariants``; the outcome oracle (``cordtrio.testing.oracle``)
checks that each run ended as the spec implies for what was delivered; each seed has a
``Budget``. ``python -m cordtrio.testing.mutations`` measures how fast engine mutants are
caught.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing

from ..model import Workflow
from ..validation import validate_workflow
from ..worker import Handler
from .cuts import cut_workflows
from .faults import FaultProfile, resolve_profile
from .generate import random_run_input, random_workflow
from .invariants import INVARIANTS
from .mix import FAULT_SWITCHES, STORE_FAIL_RATES, resolve_mix
from .report import SimulationFailure, SimulationReport, SimulationTotals
from .scenario import LEASE_STORES, STORES, Budget, BudgetWatch, Scenario, Sim, play
from .trace import TRACE_TAIL, count_faults, trace_hash
from .workers import SimulatedWorker

__all__ = [
    "FAULT_PRESETS",
    "INVARIANTS",
    "LEASE_STORES",
    "STORES",
    "Budget",
    "SimulationFailure",
    "SimulationReport",
    "SimulationTotals",
    "run_under_faults",
    "simulate",
]

FAULT_PRESETS = (*STORE_FAIL_RATES, "swarm")
"""The names ``faults`` takes: three fixed points and ``swarm`` (a mix drawn per seed,
``cordtrio.testing.swarm``)."""


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


def _default_inputs(rng: random.Random, wf: Workflow) -> dict[str, Any]:
    return random_run_input(rng)


def crash_count(seed: int, crash: bool | int) -> int:
    """How many times ``simulate(seed, crash=crash)`` crashes an engine: True draws one
    to three from the seed, False none, a number that many."""
    if isinstance(crash, bool):
        return random.Random(f"cordtrio-sim:{seed}:crash-count").randint(1, 3) if crash else 0
    if crash < 0:
        raise ValueError(f"simulate(): crash must not be negative, got {crash}")
    return int(crash)


def scenario_workflows(seed: int, workflows: Sequence[Workflow] | None = None,
                       keep: Sequence[str] = (), drop: Sequence[str] = ()) -> list[Workflow]:
    """The workflows ``simulate(seed, workflows=...)`` runs: ``workflows`` (validated), or
    one to three random ones drawn from the seed; then cut (``cuts.cut_workflows``)."""
    if workflows is None:
        rng = random.Random(f"cordtrio-sim:{seed}:workflows")
        # job steps without a timeout too: over a bus with job queues every run must end
        # without one (SPEC §13; the liveness invariant checks it)
        wfs = [random_workflow(rng, workflow_id=f"wf-{i}", require_timeouts=False)
               for i in range(rng.randint(1, 3))]
    else:
        wfs = list(workflows)
        if not wfs:
            raise ValueError("simulate(): workflows must not be empty")
        for wf in wfs:
            validate_workflow(wf)
    if keep or drop:
        wfs = cut_workflows(wfs, keep=keep, drop=drop)
    return wfs


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
    store: str = "memory",
    engines: int = 1,
    quiet: bool = True,
    budget: Budget | None = None,
    disabled: Sequence[str] = (),
    store_ambiguous_rate: float | None = None,
    store_read_fail_rate: float | None = None,
    keep_workflows: Sequence[str] = (),
    drop_steps: Sequence[str] = (),
    operator: bool = True,
) -> SimulationReport:
    """Run one deterministic simulation; raise ``SimulationFailure`` on a violated
    invariant, else return a ``SimulationReport``.

    ``workflows``: the definitions to run (default: one to three ``random_workflow``\\ s
    drawn from the seed). ``runs`` runs are submitted during the first half of ``horizon``
    (virtual seconds), with inputs from ``inputs(rng, workflow)`` (default:
    ``random_run_input``). ``faults`` is a bus ``FaultProfile`` or a preset name (``none``,
    ``light``, ``heavy``); the same name also picks the worker behaviour
    (``SimulatedWorker.preset``) and the store failure rate (0, 5 %, 20 %) unless
    ``worker`` / ``store_fail_rate`` say otherwise, and the rates of ambiguous store writes
    (applied, reply lost: 0, 2 %, 5 %; ``store_ambiguous_rate``) and failed store reads
    (0, 2 %, 5 %; ``store_read_fail_rate``). ``faults="swarm"`` draws bus, store and
    worker fault rates from the seed (``cordtrio.testing.swarm.draw_swarm``), and the
    share of the horizon during which engines and workers are partitioned
    (``partition``). The fault kinds in ``disabled`` (``mix.FAULT_SWITCHES``) are off,
    under any preset (``cordtrio.testing.mix``). ``crash``: crash and restart the engine
    (True = one to three times, as the seed draws; or a number of times; False or 0 =
    never), at virtual times drawn from the seed during the horizon, some while a timer is
    pending and some right as a crashed engine reopens (``drivers.crasher``). ``handlers``:
    your own handlers by topic, called when a simulated job succeeds. After ``horizon``,
    faults stop and every run must be terminal within ``bound`` virtual seconds.
    ``store``: ``"memory"`` (``MemoryStore``) or ``"fakeredis"`` (the Redis store and
    payload store over an in-process fakeredis server; needs ``fakeredis``). On the memory
    store the engines use its run leases (multi-engine mode: leases, fenced writes,
    takeover); over fakeredis they run single-engine mode (see ``scenario``).
    ``engines``: how many engines share the store and the bus (memory store only; each
    crashes and restarts on its own; the ``single_owner`` invariant checks that a run has
    one driver at a time).
    ``quiet``: silence cordtrio's log warnings while simulating.
    ``budget``: what the seed may spend (``Budget``: virtual time beyond ``horizon +
    bound``, Trio task steps, CPU seconds) before it fails with invariant ``budget``
    rather than running on.
    ``keep_workflows``, ``drop_steps``: run only these of the seed's workflows, without
    these steps (``"wf-0/s3"``; see ``cordtrio.testing.cuts``). ``operator=False``: no
    cancels, reruns or ``Client`` calls (under faults they are on). The shrinker
    (``cordtrio.testing.shrink``) uses these to make a failing seed smaller.
    """
    if store not in STORES:
        raise ValueError(f"simulate(): unknown store {store!r}: expected one of {STORES}")
    if runs < 1:
        raise ValueError(f"simulate(): runs must be at least 1, got {runs}")
    if engines < 1:
        raise ValueError(f"simulate(): engines must be at least 1, got {engines}")
    if engines > 1 and store not in LEASE_STORES:
        raise ValueError(f"simulate(): engines={engines} needs run leases, which the "
                         f"simulation uses only on store {LEASE_STORES} (not {store!r})")
    wfs = scenario_workflows(seed, workflows, keep_workflows, drop_steps)
    mix = resolve_mix(seed, faults, disabled=disabled, worker=worker,
                      store_fail_rate=store_fail_rate,
                      store_ambiguous_rate=store_ambiguous_rate,
                      store_read_fail_rate=store_read_fail_rate)
    crashes = crash_count(seed, crash)
    scenario = Scenario(
        seed=seed, workflows=tuple(wfs), inputs=inputs or _default_inputs, runs=runs,
        profile=mix.profile, worker=mix.worker, handlers=dict(handlers or {}),
        store_fail_rate=mix.store_fail_rate, crashes=crashes, horizon=horizon, bound=bound,
        workers=workers, approve_rate=approve_rate, store=store, engines=engines,
        budget=budget or Budget(), store_ambiguous_rate=mix.store_ambiguous_rate,
        store_read_fail_rate=mix.store_read_fail_rate, partition=mix.partition,
        operator=operator and (faults == "swarm" or resolve_profile(faults).any),
    )
    sim = Sim(scenario)
    started = time.perf_counter()
    clock = trio.testing.MockClock(autojump_threshold=0)
    with _deterministic_scheduling(seed), _quiet_logs(quiet):
        trio.run(play, sim, clock=clock, instruments=[BudgetWatch(sim)])
    real = time.perf_counter() - started
    if sim.failure is not None:
        invariant, detail = sim.failure
        raise SimulationFailure(seed, invariant, detail, sim.trace[-TRACE_TAIL:], sim.trace)
    latest = sim.check.latest
    statuses = Counter(latest[rid].status.value for rid in sim.accepted)
    injected = dict.fromkeys((*FAULT_SWITCHES, "engine_crash"), 0)
    injected.update(count_faults(sim.trace))
    return SimulationReport(
        seed=seed,
        runs=len(sim.accepted) - len(sim.reruns),
        reruns=len(sim.reruns),
        steps_dispatched=sim.dispatches,
        faults_injected=injected,
        virtual_time=clock.current_time(),
        real_time=real,
        trace_hash=trace_hash(sim.trace),
        statuses=dict(sorted(statuses.items())),
        engine_restarts=sim.engine_restarts,
        trace=sim.trace,
        situations=dict(sorted(sim.oracle.counts.items())),
    )


def first_failing_seed(seeds: Iterable[int], **options: Any) -> SimulationFailure | None:
    """``simulate`` each of ``seeds`` in order with ``options``; return the first failure
    (None when every seed passed): how a test shows that a deliberately broken engine is
    caught, and by which seed."""
    for seed in seeds:
        try:
            simulate(seed, **options)
        except SimulationFailure as failure:
            return failure
    return None


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
    through. Other ``options`` (``store``, ``horizon``, ``worker``...) go to ``simulate``.
    Raises ``SimulationFailure`` (with the seed and a trace) on a violation."""
    wfs = [workflow] if isinstance(workflow, Workflow) else list(workflow)
    if inputs is None:
        choices: list[dict[str, Any]] = [{}]
    elif isinstance(inputs, dict):
        choices = [inputs]
    else:
        choices = list(inputs)
        if not choices:
            raise ValueError("run_under_faults(): inputs must not be an empty list")
    counter = iter(range(1 << 62))

    def pick(rng: random.Random, wf: Workflow) -> dict[str, Any]:
        return dict(choices[next(counter) % len(choices)])

    return simulate(seed, workflows=wfs, handlers=handlers, faults=faults, runs=runs,
                    inputs=pick, crash=crash, **options)
