"""The short way of deciding a job result (``cordtrio.core.quick``): taken for plain jobs,
and deciding exactly like the general path, including when a dependent cannot start.
(tests/properties/test_quick_properties.py compares both over random runs.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from harness import Sim, step, workflow

from cordtrio.core import machine, quick
from cordtrio.core.state import Tx
from cordtrio.model import RetryConfig, RunStatus, StepStatus, Workflow
from cordtrio.protocol import JobStatus


@contextmanager
def _answers(short_way: bool = True) -> Iterator[list[bool]]:
    """The short way on or off while inside; yields what ``quick_result`` answered each
    time it was asked."""
    taken: list[bool] = []

    def asked(*args: Any) -> bool:
        answer = quick.quick_result(*args) if short_way else False
        taken.append(answer)
        return answer

    def start(tx: Any) -> bool:
        return quick.quick_start(tx) if short_way else False

    with (mock.patch.object(machine, "quick_result", asked),
          mock.patch.object(machine, "quick_start", start)):
        yield taken


def _drive(wf: Workflow, short_way: bool, play: Callable[[Sim], None]) -> tuple[Sim, list[bool]]:
    """Play ``play`` on a new run, with the short way on or off; what ``quick_result``
    answered each time it was asked."""
    sim = Sim(wf, run_input={"k": 1})
    with _answers(short_way) as taken:
        sim.start()
        play(sim)
    return sim, taken


def _same_both_ways(wf: Workflow, play: Callable[[Sim], None]) -> tuple[Sim, list[bool]]:
    fast, taken = _drive(wf, True, play)
    slow, _ = _drive(wf, False, play)
    assert len(fast.outcomes) == len(slow.outcomes)
    for a, b in zip(fast.outcomes, slow.outcomes, strict=True):
        assert repr(a.effects) == repr(b.effects)
        assert repr(a.rows) == repr(b.rows)
        assert a.changes == b.changes
    assert fast.run.to_dict() == slow.run.to_dict()
    return fast, taken


def _succeed_all(sim: Sim) -> None:
    while sim.running_jobs():
        for job in sorted(sim.running_jobs()):
            sim.succeed(job, {"v": job})


def test_a_chain_of_jobs_goes_the_short_way_and_ends_as_the_general_path_does() -> None:
    wf = workflow(step("a"), step("b", depends_on=["a"], output_path="out.b"),
                  step("c", depends_on=["b"], input={"x": "${steps.b.output.v}"}, timeout_sec=5))
    sim, taken = _same_both_ways(wf, _succeed_all)
    assert taken == [True, True, True]
    assert sim.run.status == RunStatus.SUCCEEDED
    assert sim.dispatched() == ["run-1:a@1", "run-1:b@1", "run-1:c@1"]
    assert sim.dispatches[-1].payload == {"x": "run-1:b@1"}


def test_a_join_starts_once_its_last_dependency_succeeds() -> None:
    wf = workflow(step("a"), step("b"), step("c"), step("j", depends_on=["c", "a", "b"]))
    sim, taken = _same_both_ways(wf, _succeed_all)
    assert taken == [True] * 4
    assert sim.dispatched()[-1] == "run-1:j@1"


def test_a_dependent_that_cannot_start_hands_over_to_the_general_path() -> None:
    """b's input cannot be rendered: it fails, its handler starts, c (a later sibling)
    does not start, exactly as the general path decides."""
    wf = workflow(
        step("a"),
        step("b", depends_on=["a"], input={"x": "${nosuch(1)}"}, on_error="h"),
        step("c", depends_on=["a"]),
        step("h"),
        validate=False,
    )

    def play(sim: Sim) -> None:
        sim.succeed("run-1:a@1", {"v": 1})
        for job in sorted(sim.running_jobs()):
            sim.succeed(job)

    sim, taken = _same_both_ways(wf, play)
    assert taken[0] is True
    assert sim.status("b") == StepStatus.FAILED
    assert sim.status("h") == StepStatus.SUCCEEDED
    assert sim.status("c") is None


def test_other_results_go_the_general_path() -> None:
    """A failure, a stale result, a gated dependent: the general path decides."""
    wf = workflow(step("a", retry=RetryConfig(max_retries=1)), step("b", depends_on=["a"]),
                  step("g", depends_on=["b"], condition="input.k > 0"),
                  validate=False)

    def play(sim: Sim) -> None:
        sim.fail("run-1:a@1")
        sim.advance(10)
        sim.succeed("run-1:a@1")  # stale
        sim.succeed("run-1:a@2")
        sim.result("run-1:b@1", JobStatus.SUCCEEDED)

    sim, taken = _same_both_ways(wf, play)
    assert taken == [False, False, True, False]
    assert sim.status("g") == StepStatus.RUNNING


def test_a_first_step_that_cannot_start_hands_over_to_the_general_path() -> None:
    wf = workflow(
        step("a", input={"x": "${nosuch(1)}"}, on_error="h"),
        step("b"),
        step("c", depends_on=["b"]),
        step("h"),
        validate=False,
    )
    sim, _ = _same_both_ways(wf, _succeed_all)
    assert sim.status("a") == StepStatus.FAILED
    assert sim.status("h") == StepStatus.SUCCEEDED
    assert sim.status("b") is None


def test_a_start_goes_the_short_way_only_when_every_first_step_is_a_plain_job() -> None:
    plain = workflow(step("a"), step("b"), step("c", depends_on=["a", "b"]))
    gated = workflow(step("a"), step("g", condition="input.k > 0"))
    for wf, short in ((plain, True), (gated, False)):
        sim = Sim(wf, run_input={"k": 1})
        tx = Tx(sim.plan, sim.state, sim.now)
        assert quick.quick_start(tx) is short
        _same_both_ways(wf, _succeed_all)


def test_odd_job_ids_are_read_as_the_general_path_reads_them() -> None:
    wf = workflow(step("a"), step("b", depends_on=["a"]))

    def play(sim: Sim) -> None:
        for job_id in ("run-1:a", "run-1:a@", "run-1:a@x", ":a@1", "run-1:@1", "a@1",
                       "run-1:a@01", "run-1:a@2", "other:a@1", "run-1:run-1:a@1", "@1"):
            sim.result(job_id, JobStatus.SUCCEEDED)
        _succeed_all(sim)

    sim, taken = _same_both_ways(wf, play)
    assert taken.count(True) == 2
    assert sim.run.status == RunStatus.SUCCEEDED


def test_every_kind_of_loaded_output_is_recorded_as_the_general_path_records_it() -> None:
    """The short way writes a result's context entry itself (``record_output``'s common
    case): a loaded value, a value too large to inline, a payload that failed to load, no
    payload loaded, and a step with an ``output_path``, each as the general path does."""
    from cordtrio.core.events import LoadedOutput

    outputs: list[LoadedOutput | None] = [
        LoadedOutput({"v": 1}), LoadedOutput({"v": 2}, too_large=True),
        LoadedOutput(error="gone", loaded=False), None, LoadedOutput([1, "x"])]
    wf = workflow(step("a"), step("b", depends_on=["a"], output_path="out.b"),
                  step("c", depends_on=["b"]), step("d", depends_on=["c"]),
                  step("e", depends_on=["d"], output_path="out.e"))

    def play(sim: Sim) -> None:
        for output in outputs:
            (job,) = sim.running_jobs()
            sim.result(job, JobStatus.SUCCEEDED, result_ptr=f"redis://res:{job}",
                       output=output)

    sim, taken = _same_both_ways(wf, play)
    assert taken == [True] * 5
    steps = sim.run.context["steps"]
    assert steps["a"] == {"result_ptr": "redis://res:run-1:a@1", "output": {"v": 1}}
    assert steps["b"] == {"result_ptr": "redis://res:run-1:b@1"}
    assert sim.run.context["out"] == {"b": "redis://res:run-1:b@1", "e": [1, "x"]}


def test_a_step_id_with_a_colon_goes_the_general_path_as_it_reads_the_job_id() -> None:
    """``parse_job_id`` splits a job id at its last ``:``: a result of step ``x:y`` is
    stale to the general path, and the short way (which finds a StepRun by job id) does
    not take it either. An ``@`` in a step id reads back as it was."""
    wf = workflow(step("x:y"), step("a@b", depends_on=["x:y"]), step("c", depends_on=["a@b"]),
                  validate=False)

    sim, taken = _same_both_ways(wf, lambda sim: sim.succeed("run-1:x:y@1"))
    assert taken == [False]
    assert sim.status("x:y") == StepStatus.RUNNING  # stale, as the general path reads it
    wf = workflow(step("a@b"), step("c", depends_on=["a@b"]))
    sim, taken = _same_both_ways(wf, _succeed_all)
    assert taken == [True, True]
    assert sim.run.status == RunStatus.SUCCEEDED


def test_a_job_started_before_a_load_goes_the_general_path_and_the_next_the_short_way() -> None:
    """The jobs the short way knows by id (``RunState.started``) are those started since
    the run was loaded: a result of one started before goes the general path."""
    from cordtrio.core.state import RunState
    from cordtrio.model import WorkflowRun

    wf = workflow(step("a"), step("b", depends_on=["a"]), step("c", depends_on=["b"]))
    sim = Sim(wf)
    sim.start()
    sim.state = RunState(WorkflowRun.from_dict(sim.run.to_dict()))  # as a store loads it
    assert sim.state.started == {}
    with _answers() as taken:
        sim.succeed("run-1:a@1")
        assert sim.state.started.keys() == {"run-1:b@1"}
        sim.succeed("run-1:b@1")
        sim.succeed("run-1:c@1")
    assert taken == [False, True, True]
    assert sim.state.started == {}
    assert sim.run.status == RunStatus.SUCCEEDED
    # the same events decided the general way give the same run
    slow = Sim(wf)
    with _answers(short_way=False):
        slow.start()
        for job_id in ("run-1:a@1", "run-1:b@1", "run-1:c@1"):
            slow.succeed(job_id)
    assert slow.run.to_dict() == sim.run.to_dict()


def test_a_started_job_whose_step_was_replaced_goes_the_general_path() -> None:
    """The short way applies a result only to the StepRun its job started, still kept
    under its step's id; if that entry was replaced, the general path decides (a stale
    result there)."""
    from cordtrio.model import StepRun

    wf = workflow(step("a"), step("b", depends_on=["a"]))
    sim = Sim(wf)
    sim.start()
    started = sim.state.started["run-1:a@1"]
    sim.run.steps["a"] = StepRun.from_dict(started.to_dict())  # equal, not the same object
    with _answers() as taken:
        sim.succeed("run-1:a@1")
    assert taken == [False]
    assert started.status is StepStatus.RUNNING  # the replaced object was not touched
