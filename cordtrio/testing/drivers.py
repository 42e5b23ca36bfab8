"""The drivers of a scenario: what acts on the system under test from outside, each a
task of ``scenario.play`` — the submitter, the approver, the operator (cancels and
reruns, through the ``Client`` or an engine), the crasher (engine crashes placed in
virtual time), the partitioner (engines cut off from workers) and the virtual-time
budget. They share ``scenario.Sim`` (its seeded random streams and its trace)."""

from __future__ import annotations

import math
import random

import trio

from ..client import Client
from ..engine.supervisor import Engine
from ..errors import CordtrioError
from .faults import FaultyBus
from .state import Scenario, Sim

__all__ = ["approver", "crasher", "operator", "partitioner", "submitter", "virtual_budget"]


async def crasher(sim: Sim, t0: float) -> None:
    """Crash an engine ``sc.crashes`` times during the first 85 % of the horizon, the k-th
    crash within the k-th of as many equal windows. Each crash has a mode drawn from the
    seed: ``time`` (the first trace event from a virtual time drawn in the window: the
    engine is cut mid-operation), ``timer`` (soon after a stored run starts waiting for a
    retry backoff or a delay) or, from the second crash on, ``restart`` (as a crashed
    engine reopens, often before its recovery is done). A crash whose trigger has not come
    by the end of its window happens then, so every planned crash happens."""
    sc = sim.sc
    rng = sim.rng_crashes
    try:
        await _crashes(sim, t0, sc, rng)
    finally:
        sim.crashes_done = True
        sim.check_idle()


async def _crashes(sim: Sim, t0: float, sc: Scenario, rng: random.Random) -> None:
    if sc.crashes < 1:
        return
    window = 0.85 * sc.horizon / sc.crashes
    for i in range(sc.crashes):
        start, end = t0 + i * window, t0 + (i + 1) * window
        mode = rng.choice(("time", "timer", "restart") if i else ("time", "timer"))
        due = rng.uniform(start, max(start, end - 5.0))
        if mode != "restart":  # "restart" is armed at once: the engine may reopen soon
            await trio.sleep_until(max(start, trio.current_time()))
        sim.crashed = trio.Event()
        sim.crash_target = ""
        sim.crash_mode = mode
        sim.crash_due = max(due, trio.current_time()) if mode == "time" else math.inf
        with trio.move_on_at(max(end, trio.current_time() + 5.0)):
            await sim.crashed.wait()
        if not sim.crashed.is_set():  # its trigger never came: crash now
            sim.crash_mode = ""
            while not sim.engine_scopes:
                await trio.sleep(0.5)
            sim.crash()


async def partitioner(sim: Sim, t0: float, bus: FaultyBus) -> None:
    """Cut the network between engines and workers ``sc.partition`` of the horizon, in
    one to three partitions during its first 85 %, the k-th within the k-th of as many
    equal windows (``FaultyBus.cut``: jobs and results wait, cancels are lost)."""
    sc = sim.sc
    if sc.partition <= 0:
        return
    rng = random.Random(f"cordtrio-sim:{sc.seed}:partitions")
    count = rng.randint(1, 3)
    window = 0.85 * sc.horizon / count
    length = min(sc.partition * sc.horizon / count, window)
    for i in range(count):
        await trio.sleep_until(t0 + i * window + rng.uniform(0.0, window - length))
        if not sim.faults_on:
            return
        sim.line(f"-- partition: engines cut off from workers for {length:.1f}s")
        bus.cut()
        await trio.sleep(length)
        if bus.partitioned:
            held = bus.held_by_partition
            bus.heal()
            sim.line(f"-- partition healed ({held} job(s) and result(s) delivered)")
            if held:
                sim.oracle.note("partition")


async def virtual_budget(sim: Sim, t0: float) -> None:
    """Fail the seed (``budget``) if it is still going ``budget.virtual`` seconds after
    ``horizon + bound``: the liveness check should have ended it by then."""
    sc = sim.sc
    limit = sc.horizon + sc.bound + sc.budget.virtual
    await trio.sleep_until(t0 + limit)
    sim.over_budget(f"{limit:g} s of virtual time (horizon {sc.horizon:g} s + bound "
                    f"{sc.bound:g} s + {sc.budget.virtual:g} s)")


async def _current_engine(sim: Sim) -> Engine:
    """An engine that is up (with several, a seeded choice)."""
    while not sim.engines:
        await sim.engine_ready.wait()
    names = sorted(sim.engines)
    return sim.engines[names[0] if len(names) == 1 else sim.rng.choice(names)]


async def _via(sim: Sim) -> tuple[str, Engine | Client]:
    """Who the driver goes through this time: the ``Client`` (its seeded share of the
    time, with run leases) or an engine that is up."""
    if sim.client is not None and sim.rng_ops.random() < sim.client_share:
        return " (client)", sim.client
    return "", await _current_engine(sim)


async def submitter(sim: Sim) -> None:
    sc = sim.sc
    wf_ids = list(sim.workflows)
    for i in range(sc.runs):
        await trio.sleep(sim.rng.uniform(0.0, sc.horizon / max(2 * sc.runs, 1)))
        wf = sim.workflows[sim.rng.choice(wf_ids)]
        payload = sc.inputs(sim.rng, wf)
        # Half the runs are submitted without an idempotency key when an engine takes
        # them (created by their first write, ``ports.CreatingWrites``); a failed such
        # submit is sent again, and may leave a run nobody accepted, as for any client.
        keyed = sim.rng_keys.random() < 0.5
        key = f"sim-{sim.seed}-{i}"
        while True:
            how, api = await _via(sim)
            run_id: str | None = None
            with trio.move_on_after(60):
                try:
                    run_id = await api.submit(wf.id, payload, idempotency_key=key
                                              if keyed or how else None,
                                              triggered_by="simulation")
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"submit {key} failed{how}: {type(exc).__name__}")
            if run_id is not None:
                sim.accepted[run_id] = None
                sim.line(f"submit {key} accepted {run_id}{how}")
                break
            await trio.sleep(sim.rng.uniform(0.1, 2.0))


async def operator(sim: Sim, t0: float) -> None:
    """During the horizon, now and then: cancel a run that is not terminal
    (``cancel_rate``), or rerun a terminal one from its start or from one of its steps
    (``rerun_rate``), through the Client or an engine. The oracle hears of each cancel
    before it is asked for; a rerun joins the runs that must end."""
    sc = sim.sc
    latest = sim.check.latest
    if not (sim.cancel_rate or sim.rerun_rate):
        return
    rng = sim.rng_ops
    while trio.current_time() < t0 + 0.9 * sc.horizon:
        await trio.sleep(rng.uniform(5.0, 30.0))
        open_runs = [r for r in sim.accepted if (v := latest.get(r)) is not None
                     and not v.status.is_terminal]
        done = [r for r in sim.accepted if (v := latest.get(r)) is not None
                and v.status.is_terminal and r not in sim.reruns.values()]
        if open_runs and rng.random() < sim.cancel_rate:
            rid = rng.choice(open_runs)
            how, api = await _via(sim)
            sim.line(f"cancel {rid}{how}")
            sim.oracle.cancel_requested(rid)
            with trio.move_on_after(60):
                try:
                    await api.cancel_run(rid)
                except (CordtrioError, RuntimeError) as exc:
                    sim.line(f"cancel {rid} failed{how}: {type(exc).__name__}")
        if done and rng.random() < sim.rerun_rate:
            await _rerun(sim, rng.choice(done))


async def _rerun(sim: Sim, rid: str) -> None:
    rng = sim.rng_ops
    wf = sim.workflows[sim.check.latest[rid].workflow_id]
    step = rng.choice(("", *sorted(wf.steps)))
    how, api = await _via(sim)
    new: str | None = None
    with trio.move_on_after(60):
        try:
            new = await api.rerun_from(rid, step)
            if isinstance(api, Engine):  # an engine's rerun_from creates, not starts
                sim.line(f"rerun {rid} from {step or 'the start'} created {new}")
                while True:
                    try:
                        await (await _current_engine(sim)).start_run(wf.id, new)
                        break
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"start {new} failed: {type(exc).__name__}")
                        await trio.sleep(rng.uniform(0.1, 2.0))
        except (CordtrioError, RuntimeError) as exc:
            sim.line(f"rerun {rid} failed{how}: {type(exc).__name__}")
            return
    if new is not None:
        sim.reruns[new] = rid
        sim.accepted[new] = None
        if sim.all_done.is_set():  # one more run that must end (it may have already)
            sim.all_done = trio.Event()
            sim.check_done()
        sim.oracle.note("rerun")
        sim.line(f"rerun {rid} from {step or 'the start'} accepted {new}{how}")


async def approver(sim: Sim) -> None:
    latest = sim.check.latest
    while True:
        await sim.waiting.wait()
        await trio.sleep(sim.rng.uniform(1.0, 15.0))
        if not sim.engines:
            continue
        sim.waiting = trio.Event()
        for rid in list(latest):
            # a triggered approval handler waits in a *running* run; none in a terminal one
            for sid in latest[rid].waiting:
                ok = sim.rng.random() < sim.sc.approve_rate
                how, api = await _via(sim)
                sim.line(f"{'approve' if ok else 'reject'} {rid}:{sid}{how}")
                sim.oracle.approval(rid, sid, ok)
                with trio.move_on_after(60):
                    try:
                        await api.approve_step(rid, sid, ok)
                    except (CordtrioError, RuntimeError) as exc:
                        sim.line(f"approve {rid}:{sid} failed{how}: {type(exc).__name__}")
        if any(view.waiting for view in latest.values()):
            sim.waiting.set()  # something is still waiting (e.g. the engine was down)
