"""The tables of the command line at common terminal widths: ids are never cut, the
status always shows, long errors wrap instead of squashing the other columns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from cordtrio.cli.output import json_text
from cordtrio.cli.report import summary_table
from cordtrio.cli.runs_cmd import runs_table
from cordtrio.model import (
    RunStatus,
    Step,
    StepRun,
    StepStatus,
    Workflow,
    WorkflowRun,
)

T0 = datetime(2026, 12, 2, 23, 3, 11, 761171, tzinfo=UTC)
RUN_IDS = ["4f1c2a9e-0b7d-4c3e-9a55-2f8e6d1b7c90", "9b2e7d14-3c5a-4f6b-8e21-7a0c9d3f5b16"]


def render(table: object, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
def test_runs_list_keeps_whole_ids_and_the_status(width: int) -> None:
    runs = [WorkflowRun(id=rid, workflow_id="document_pipeline_with_a_long_name",
                        status=RunStatus.TIMED_OUT, created_at=T0, completed_at=T0)
            for rid in RUN_IDS]
    text = render(runs_table(runs), width)
    for rid in RUN_IDS:
        assert rid in text
    assert text.count("timed_out") == 2 and "Status" in text
    assert "2026-12-02" in text


def test_long_errors_wrap_and_step_and_status_keep_their_width() -> None:
    wf = Workflow(id="w", steps={"fetch_documents": Step(topic="t")})
    message = "connection refused by https://example.com/a/rather/long/path " * 3
    run = WorkflowRun(id="r", steps={"fetch_documents": StepRun(
        step_id="fetch_documents", status=StepStatus.FAILED, attempts=3,
        error={"message": message})})
    text = render(summary_table(wf, run, []), 80)
    assert "fetch_documents" in text and "failed" in text
    assert "/path" in text and text.count("connection refused") == 3  # wrapped, not cut


def test_a_fan_out_parent_shows_its_own_attempts_and_counts_items() -> None:
    wf = Workflow(id="w", steps={"each": Step(topic="t", for_each="input.items")})
    children = {f"each[{i}]": StepRun(step_id=f"each[{i}]", status=StepStatus.SUCCEEDED,
                                      attempts=1) for i in range(9)}
    run = WorkflowRun(id="r", steps={"each": StepRun(
        step_id="each", status=StepStatus.SUCCEEDED, children=children)})
    parent = next(line for line in render(summary_table(wf, run, []), 100).splitlines()
                  if line.lstrip().startswith("each "))
    assert "9/9 items succeeded" in parent
    assert " 9 " not in parent.split("9/9")[0]  # no attempts summed over the children


def test_cli_json_writes_times_in_rfc3339() -> None:
    assert json_text({"at": T0, "status": RunStatus.FAILED}) == (
        '{\n  "at": "2026-12-02T23:03:11.761171Z",\n  "status": "failed"\n}')
