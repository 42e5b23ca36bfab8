"""Run status properties of the pure core (SPEC §3/§6/§7/§9): runs reach a terminal
status, terminal runs never change, and the status follows the SPEC §7 rule
(see ``sim_driver``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_checks import check_failure_waits_for_handler, check_status_rule
from sim_driver import (
    COMMON,
    T0,
    Fed,
    Simulation,
    Weights,
    all_step_runs,
    examples,
    make_result,
    simulate,
)
from strategies import run_inputs, workflows

from cordtrio.core.events import (
    AlertOutcome,
    Approve,
    CancelRun,
    DispatchFailed,
    Recover,
    Start,
    TimerFired,
    TimerKind,
)
from cordtrio.core.machine import Outcome
from cordtrio.model import Workflow
from cordtrio.protocol import JobStatus


@settings(COMMON, max_examples=examples(120))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_a_terminal_run_never_changes(wf: Workflow, run_input: dict[str, Any],
                                      data: Any) -> None:
    """SPEC §3/§6/§9: once terminal, nothing touches the run: late results, timers,
    alerts, dispatch failures, cancel, start and recover give no effects and no change;
    approvals are refused."""
    sim = simulate(data, wf, run_input)
    frozen = sim.run.to_dict()
    step_ids = [*sim.plan.order, "no-such-step"]
    job_ids = [*sim.finished_jobs[-8:], *sim.forged_job_ids()]
    pending_timers = [t for _, _, t in sorted(sim.timers)]
    events = st.one_of(
        st.builds(make_result, st.sampled_from(job_ids), st.sampled_from(list(JobStatus))),
        st.builds(TimerFired, st.sampled_from(list(TimerKind)), st.sampled_from(step_ids),
                  st.sampled_from(job_ids)),
        st.builds(Approve, st.sampled_from(step_ids), st.booleans()),
        st.builds(AlertOutcome, st.sampled_from(step_ids), st.sampled_from(["", "boom"])),
        st.builds(DispatchFailed, st.sampled_from(step_ids), st.sampled_from(job_ids),
                  st.just("publish failed")),
        st.sampled_from([CancelRun(), Start(), Recover()]),
        *([st.builds(lambda t: TimerFired(t.kind, t.target, t.job_id),
                     st.sampled_from(pending_timers))] if pending_timers else []),
    )
    for late in data.draw(st.lists(events, min_size=1, max_size=12), label="after the end"):
        sim.now += timedelta(hours=1)
        out = sim.feed("after end", late)
        if out is not None:
            assert not out.effects, sim.fail_text(f"terminal run gave effects {out.effects!r}")
            assert not out.rows, sim.fail_text(f"terminal run gave timeline rows {out.rows!r}")
            assert not out.changes, sim.fail_text(f"terminal run changed {out.changes!r}")
        assert sim.run.to_dict() == frozen, sim.fail_text(f"terminal run changed by {late!r}")


@settings(COMMON, max_examples=examples(250))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_every_run_reaches_a_terminal_status(wf: Workflow, run_input: dict[str, Any],
                                             data: Any) -> None:
    """Liveness: answered results, fired timers, answered approvals and alerts always
    bring a run to a terminal status (never cancelled here), with nothing left running."""
    sim = simulate(data, wf, run_input, weights=Weights(cancel=0))
    run = sim.run
    assert run.status.is_terminal and run.completed_at is not None
    live = [sr.step_id for _, sr in all_step_runs(run) if not sr.status.is_terminal]
    assert not live, sim.fail_text(f"terminal run with live steps {live}")
    assert not sim.in_flight, sim.fail_text(f"terminal run with jobs in flight {sim.in_flight}")


@settings(COMMON, max_examples=examples(200))
@given(wf=workflows(), run_input=run_inputs(), data=st.data())
def test_run_status_follows_spec_rule(wf: Workflow, run_input: dict[str, Any],
                                      data: Any) -> None:
    """SPEC §7: after every event the run's status is what the rule says, both by
    ``compute_run_status`` and by an independent reading of the text; a failure never ends
    the run while a triggered handler is still working."""
    sim = Simulation(wf, run_input, data, checks=[check_status_rule,
                                                  check_failure_waits_for_handler],
                     snapshot=True)
    check_status_rule(sim, Fed("created", Start(), T0, None), Outcome())
    sim.run_to_end()
