"""What docs/testing.md shows: a user's own workflow and handlers under faults."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cordtrio import Job, load_workflow
from cordtrio.model import Step, StepType, Workflow
from cordtrio.testing import SimulationFailure, run_under_faults

ROOT = Path(__file__).resolve().parents[2]


def _example_handlers() -> Any:
    """examples/document_handlers.py, imported by path (examples/ is not a package on
    sys.path unless something put the repo root there)."""
    spec = importlib.util.spec_from_file_location(
        "example_document_handlers", ROOT / "examples" / "document_handlers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_pipeline_under_faults() -> None:
    h = _example_handlers()
    workflow = load_workflow(ROOT / "examples" / "document_pipeline.yaml")
    handlers = {"job.docs.fetch": h.fetch, "job.docs.extract": h.extract,
                "job.docs.summarize": h.summarize}
    for seed in range(10):
        report = run_under_faults(workflow, handlers, seed=seed, faults="light",
                                  inputs={"source": "inbox", "count": 6})
        assert report.runs == 4
    calm = run_under_faults(workflow, handlers, seed=0, faults="none", crash=False,
                            inputs={"source": "inbox", "count": 6})
    assert calm.statuses == {"succeeded": 4}


def test_user_handlers_are_called() -> None:
    seen: list[str] = []

    async def charge(job: Job) -> dict[str, Any]:
        seen.append(job.job_id)
        return {"charged": job.input.get("amount")}

    wf = Workflow(id="pay", steps={
        "charge": Step(id="charge", type=StepType.WORKER, topic="job.charge", timeout_sec=10,
                       input={"amount": "${input.amount}"}),
    })
    report = run_under_faults(wf, {"job.charge": charge}, seed=1, faults="none",
                              crash=False, inputs={"amount": 5})
    assert report.statuses == {"succeeded": 4}
    assert len(seen) == 4


def test_steps_without_timeouts_end_under_heavy_faults() -> None:
    wf = Workflow(id="naive", steps={
        "call": Step(id="call", type=StepType.WORKER, topic="job.call"),  # no timeout_sec
        "next": Step(id="next", type=StepType.WORKER, topic="job.call", depends_on=["call"]),
    })
    crashes = 0
    for seed in range(30):  # dropped cancels, duplicates, crashed workers and engines
        report = run_under_faults(wf, seed=seed, faults="heavy", bound=3600)
        assert report.runs == 4
        crashes += report.faults_injected.get("worker_crash", 0)
    assert crashes > 0


def test_a_handler_that_never_returns_keeps_its_step_running_and_says_so() -> None:
    wf = Workflow(id="naive", steps={
        "call": Step(id="call", type=StepType.WORKER, topic="job.call"),  # no timeout_sec
    })

    async def stuck(job: Job) -> None:
        import trio

        await trio.sleep_forever()

    failure = None
    try:
        run_under_faults(wf, {"job.call": stuck}, seed=0, faults="none", crash=False,
                         bound=3600)
    except SimulationFailure as exc:
        failure = exc
    assert failure is not None
    assert failure.invariant == "liveness"
    assert "timeout_sec" in str(failure) and "naive/call" in str(failure)
    assert f"seed={failure.seed}" in str(failure)
    # the message names the step still running and its job id, not only the run
    import re

    assert re.search(r"run-\d+-\w+ \(running: call running job run-\d+-\w+:call@1",
                     failure.detail), failure.detail
