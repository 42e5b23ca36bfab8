"""Builders for the store conformance tests (``test_store_*.py``): workflows and runs
with fixed timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cordtrio.model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    Workflow,
    WorkflowRun,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def workflow(wid: str = "wf-1", org_id: str = "org-a", **kw: Any) -> Workflow:
    steps = {
        "fetch": Step(id="fetch", topic="job.fetch"),
        "load": Step(id="load", topic="job.load", depends_on=["fetch"]),
    }
    return Workflow(id=wid, org_id=org_id, name=f"workflow {wid}", steps=steps, **kw)


def run(
    rid: str = "run-1",
    *,
    workflow_id: str = "wf-1",
    org_id: str = "org-a",
    status: RunStatus = RunStatus.PENDING,
    created: float = 0,
    updated: float | None = None,
    **kw: Any,
) -> WorkflowRun:
    return WorkflowRun(
        id=rid,
        workflow_id=workflow_id,
        org_id=org_id,
        status=status,
        created_at=at(created),
        updated_at=at(created if updated is None else updated),
        **kw,
    )


def big_run(rid: str = "run-1") -> WorkflowRun:
    """A run with plain steps, a for-each parent with children and a context."""
    r = run(rid, input={"n": 3}, labels={"team": "x"}, metadata={"k": "v"})
    r.steps["fetch"] = StepRun(step_id="fetch", status=StepStatus.SUCCEEDED, attempts=1,
                               job_id=f"{rid}:fetch@1", output="redis://res:a",
                               started_at=at(1), completed_at=at(2))
    parent = StepRun(step_id="each", status=StepStatus.RUNNING)
    for i in range(3):
        cid = f"each[{i}]"
        parent.children[cid] = StepRun(step_id=cid, status=StepStatus.PENDING, item={"i": i})
    r.steps["each"] = parent
    r.context = {
        "steps": {"fetch": {"result_ptr": "redis://res:a", "output": {"rows": [1, 2]}}},
        "report": {"title": "t"},
    }
    return r
