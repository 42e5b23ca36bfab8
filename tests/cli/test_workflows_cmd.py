"""``cordtrio workflows`` against a real Redis: put, list, show, graph, validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordtrio.cli import main


def test_put_list_show_graph(redis_url: str, examples: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(examples / "approval_deploy.yaml"), str(examples / "flaky_call.yaml")]
    assert main(["workflows", "put", *files, "--redis", redis_url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "saved workflow 'approval_deploy' (5 steps)", "saved workflow 'flaky_call' (2 steps)"]

    assert main(["workflows", "list", "--redis", redis_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(w["id"] for w in listed) == ["approval_deploy", "flaky_call"]

    assert main(["workflows", "list", "--redis", redis_url]) == 0
    table = capsys.readouterr().out
    assert "approval_deploy" in table and "Approved deploy" in table

    assert main(["workflows", "show", "flaky_call", "--redis", redis_url]) == 0
    shown = capsys.readouterr().out
    assert "job.api.quote" in shown and "1s" in shown  # topic, timeout

    assert main(["workflows", "graph", "approval_deploy", "--redis", redis_url,
                 "--format", "dot"]) == 0
    saved_graph = capsys.readouterr().out
    assert saved_graph.startswith("digraph") and '"approve" -> "deploy"' in saved_graph
    assert main(["workflows", "graph", files[0], "--format", "dot"]) == 0  # a file: no Redis
    assert capsys.readouterr().out == saved_graph


def test_put_checks_every_file_before_saving_any(redis_url: str, examples: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nsteps:\n  a:\n    type: approval\n    depends_on: [nowhere]\n")
    assert main(["workflows", "put", str(examples / "flaky_call.yaml"), str(bad),
                 "--redis", redis_url]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["workflows", "list", "--redis", redis_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_put_rejects_unregistered_schema_ids(redis_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    wf = tmp_path / "schema.yaml"
    wf.write_text("id: with_schema\nsteps:\n  a:\n    topic: job.x\n"
                  "    input_schema_id: orders-v1\n")
    assert main(["workflows", "put", str(wf), "--redis", redis_url]) == 2
    err = capsys.readouterr().err
    assert "step 'a'" in err and "'orders-v1' is not registered" in err
