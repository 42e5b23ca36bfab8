"""The checks a ``Simulation`` runs after every event (SPEC §3–§7), and SPEC §7's run
status rule written independently from the text."""

from __future__ import annotations

from sim_driver import Fed, Simulation, _summarise, all_step_runs, handler_ids, max_attempts

from cordtrio.core.events import (
    CancelRun,
    Dispatch,
    StepFinished,
    TimerFired,
    TimerKind,
)
from cordtrio.core.machine import Outcome, decide
from cordtrio.core.plan import Plan
from cordtrio.core.state import RunState
from cordtrio.core.status import compute_run_status
from cordtrio.model import RunStatus, StepStatus, Workflow, WorkflowRun

# ----------------------------------------------------------------- SPEC §7, independently


def spec_run_status(wf: Workflow, run: WorkflowRun) -> RunStatus:
    """SPEC §7 written from the text (not from ``cordtrio.core.status``).

    Counted steps: every step except an untriggered ``on_error`` handler (a handler is
    triggered once it has a StepRun). While a triggered handler is not terminal after a
    failure, the run is running. Then: failed/cancelled → failed; timed_out → timed_out;
    waiting → waiting; all succeeded → succeeded; else running.
    """
    handlers = handler_ids(wf)
    counted: list[StepStatus] = []
    handler_active = False
    for sid in wf.steps:
        sr = run.steps.get(sid)
        if sid in handlers:
            if sr is None:
                continue
            handler_active = handler_active or not sr.status.is_terminal
        counted.append(sr.status if sr is not None else StepStatus.PENDING)
    bad = {StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.TIMED_OUT}
    if handler_active and bad.intersection(counted):
        return RunStatus.RUNNING
    if StepStatus.FAILED in counted or StepStatus.CANCELLED in counted:
        return RunStatus.FAILED
    if StepStatus.TIMED_OUT in counted:
        return RunStatus.TIMED_OUT
    if StepStatus.WAITING in counted:
        return RunStatus.WAITING
    if all(s == StepStatus.SUCCEEDED for s in counted):
        return RunStatus.SUCCEEDED
    return RunStatus.RUNNING


# ------------------------------------------------------------------------------ checks


def check_max_parallel(sim: Simulation, step: Fed, out: Outcome) -> None:
    for sid, sr in sim.run.steps.items():
        limit = sim.wf.steps[sid].max_parallel
        if limit > 0 and sr.children:
            running = [c.step_id for c in sr.children.values()
                       if c.status == StepStatus.RUNNING]
            assert len(running) <= limit, sim.fail_text(
                f"{sid}: {len(running)} children running {running} > max_parallel {limit}"
            )


def check_attempts(sim: Simulation, step: Fed, out: Outcome) -> None:
    for sid, sr in all_step_runs(sim.run):
        limit = max_attempts(sim.wf.steps[sid])
        assert sr.attempts <= limit, sim.fail_text(
            f"{sr.step_id}: attempts {sr.attempts} > max_retries + 1 = {limit}"
        )
        assert sim.dispatches[sr.step_id] <= limit, sim.fail_text(
            f"{sr.step_id}: dispatched {sim.dispatches[sr.step_id]} times > {limit}"
        )


def check_status_rule(sim: Simulation, step: Fed, out: Outcome) -> None:
    run = sim.run
    if run.status in (RunStatus.CANCELLED, RunStatus.TIMED_OUT):
        return
    if run.status == RunStatus.PENDING:
        assert not sim.started, sim.fail_text("run pending after Start")
        return
    core = compute_run_status(sim.plan, run)
    spec = spec_run_status(sim.wf, run)
    assert run.status == core == spec, sim.fail_text(
        f"run status {run.status.value}, compute_run_status {core.value}, "
        f"SPEC §7 {spec.value}"
    )
    if run.status.is_terminal:
        assert run.completed_at is not None, sim.fail_text("terminal run without completed_at")


def check_failure_waits_for_handler(sim: Simulation, step: Fed, out: Outcome) -> None:
    """SPEC §7: after a failure the run stays running until a triggered handler is
    terminal. So when an event ends the run failed/timed out (other than a cancel or the
    workflow timeout), no triggered handler may have been cut short: a handler that the run's
    end cancelled (no ``StepFinished`` of its own) was still working."""
    assert step.before is not None
    run = sim.run
    ended = run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT) and step.before["status"] in (
        RunStatus.RUNNING.value, RunStatus.WAITING.value
    )
    if not ended or isinstance(step.event, CancelRun) or (
        isinstance(step.event, TimerFired) and step.event.kind == TimerKind.RUN_TIMEOUT
    ):
        return
    finished = {e.step_id for e in out.effects if isinstance(e, StepFinished)}
    for sid in handler_ids(sim.wf):
        sr = run.steps.get(sid)
        stored = step.before["steps"].get(sid)
        was = StepStatus(stored["status"]) if stored else StepStatus.PENDING  # absent: new
        if (sr is not None and sr.status == StepStatus.CANCELLED and sid not in finished
                and not was.is_terminal):
            raise AssertionError(sim.fail_text(
                f"run ended {run.status.value} while its triggered handler {sid} was still "
                f"{was.value if stored else 'just triggered'}; the handler was cancelled"
            ))


def check_dependencies(sim: Simulation, step: Fed, out: Outcome) -> None:
    """A non-handler step exists in the run only once all its ``depends_on`` succeeded; a
    handler only once a step naming it in ``on_error`` failed or timed out."""
    run, wf = sim.run, sim.wf
    handlers = handler_ids(wf)
    started = {e.step_id for e in out.effects if isinstance(e, Dispatch)}
    for sid in {*run.steps, *started}:
        sr = run.steps.get(sid)
        assert sr is not None, sim.fail_text(f"{sid} dispatched without a StepRun")
        if sid in handlers:
            sources = [s.id for s in wf.steps.values() if s.on_error == sid]
            assert any(
                (src := run.steps.get(s)) is not None
                and src.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
                for s in sources
            ), sim.fail_text(f"handler {sid} started but none of {sources} failed")
            continue
        for dep in wf.steps[sid].depends_on:
            dep_run = run.steps.get(dep)
            assert dep_run is not None and dep_run.status == StepStatus.SUCCEEDED, (
                sim.fail_text(
                    f"{sid} started ({sr.status.value}) but its dependency {dep} is "
                    f"{dep_run.status.value if dep_run else 'absent'}"
                )
            )


def check_stale_is_noop(sim: Simulation, step: Fed, out: Outcome) -> None:
    if step.kind != "stale":
        return
    assert not out.effects, sim.fail_text(f"stale result gave effects {out.effects!r}")
    assert not out.rows, sim.fail_text(f"stale result gave timeline rows {out.rows!r}")
    assert not out.changes, sim.fail_text(f"stale result changed {out.changes!r}")
    assert sim.run.to_dict() == step.before, sim.fail_text("stale result changed the run")


def redeliver_results(sim: Simulation, step: Fed, out: Outcome) -> None:
    """Every result is delivered twice: the second copy is a duplicate (checked as stale)."""
    if step.kind == "result":
        sim.feed("stale", step.event)


def check_reload_equivalent(sim: Simulation, step: Fed, out: Outcome) -> None:
    """Deciding the same event on the *stored* form of the run (derived indexes rebuilt
    from scratch) gives the same effects and the same run."""
    assert step.before is not None
    fresh = RunState(WorkflowRun.from_dict(step.before))
    other = decide(Plan.build(sim.wf), fresh, step.event, step.now)
    assert repr(other.effects) == repr(out.effects), sim.fail_text(
        f"reloaded state gave effects\n  {_summarise(other.effects)}\nlive state gave\n"
        f"  {_summarise(out.effects)}"
    )
    assert repr(other.rows) == repr(out.rows), sim.fail_text(
        "reloaded state gave other timeline rows")
    assert fresh.run.to_dict() == sim.run.to_dict(), sim.fail_text(
        "reloaded state ended in a different run"
    )
