"""``cordtrio runs`` against a real Redis with no engine running: submitting queues the run,
reads see it pending, waiting gives up with status 5."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cordtrio.cli import main


@pytest.fixture
def saved(redis_url: str, examples: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["workflows", "put", str(examples / "approval_deploy.yaml"),
                 "--redis", redis_url]) == 0
    capsys.readouterr()
    return redis_url


def test_submit_without_an_engine_leaves_the_run_pending(
        saved: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = saved
    assert main(["runs", "submit", "approval_deploy", "--input", '{"service": "s"}',
                 "--label", "team=ops", "--redis", url, "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]

    assert main(["runs", "list", "--status", "pending", "--redis", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == [run_id]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", listed[0]["created_at"])
    assert main(["runs", "list", "--status", "running", "--redis", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "list", "--workflow", "approval_deploy", "--redis", url]) == 0
    assert run_id in capsys.readouterr().out

    assert main(["runs", "show", run_id, "--redis", url, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["status"], run["input"], run["labels"]) == ("pending", {"service": "s"},
                                                           {"team": "ops"})
    assert main(["runs", "show", run_id, "--redis", url]) == 0
    assert f"run {run_id} of 'approval_deploy': pending" in capsys.readouterr().out

    assert main(["runs", "wait", run_id, "--timeout", "0.3", "--redis", url]) == 5
    assert capsys.readouterr().out.strip() == f"run {run_id} is still pending after 0.3s"


def test_submit_validates_the_input_against_the_schema(
        redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = tmp_path / "typed.yaml"
    wf.write_text("id: typed\ninput_schema:\n  type: object\n  required: [n]\n"
                  "steps:\n  a:\n    topic: job.x\n")
    assert main(["workflows", "put", str(wf), "--redis", redis_url]) == 0
    assert main(["runs", "submit", "typed", "--input", "{}", "--redis", redis_url]) == 2
    err = capsys.readouterr().err
    assert "typed" in err and "'n'" in err
