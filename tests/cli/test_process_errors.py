"""Every process command fails in one line, with a non-zero status, on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordtrio.cli import main

BAD_WORKFLOW = Path(__file__).resolve().parents[1] / "e2e" / "workflows" / "bad_dependency.yaml"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cordtrio: error: ")
    assert "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv", [
    ["runs", "list"],
    ["runs", "show", "some-run"],
    ["runs", "submit", "wf"],
    ["workflows", "list"],
    ["serve", "--listen", "ipc:///tmp/never-used.ipc"],
])
def test_unreachable_redis_names_the_url_and_exits_4(
        argv: list[str], dead_redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--redis", dead_redis_url]) == 4
    err = _one_line_error(capsys)
    assert dead_redis_url.replace("hunter2", "***") in err
    assert "hunter2" not in err


def test_no_redis_url_at_all(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CORDTRIO_REDIS_URL", raising=False)
    assert main(["runs", "list"]) == 2
    assert "CORDTRIO_REDIS_URL" in _one_line_error(capsys)


def test_redis_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, dead_redis_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CORDTRIO_REDIS_URL", dead_redis_url)
    assert main(["workflows", "list"]) == 4
    assert "127.0.0.1" in _one_line_error(capsys)


def test_unknown_run(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for action in (["show", "nope-run"], ["timeline", "nope-run"], ["wait", "nope-run"],
                   ["cancel", "nope-run"], ["approve", "nope-run", "step"],
                   ["rerun", "nope-run"]):
        assert main(["runs", *action, "--redis", redis_url]) == 2, action
        assert "'nope-run' not found" in _one_line_error(capsys)


def test_unknown_workflow(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "submit", "no-such-wf", "--redis", redis_url]) == 2
    assert "no-such-wf" in _one_line_error(capsys)
    assert main(["workflows", "show", "no-such-wf", "--redis", redis_url]) == 2
    assert "no-such-wf" in _one_line_error(capsys)


def test_invalid_workflow_file_names_the_step(redis_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["workflows", "put", str(BAD_WORKFLOW), "--redis", redis_url],
                 ["workflows", "validate", str(BAD_WORKFLOW)]):
        assert main(argv) == 2
        err = _one_line_error(capsys)
        assert "'second'" in err and "missing_step" in err
    assert main(["workflows", "list", "--redis", redis_url, "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"  # nothing was saved


def test_missing_workflow_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "validate", "/nonexistent/wf.yaml"]) == 2
    assert "/nonexistent/wf.yaml" in _one_line_error(capsys)


def test_bad_input_json(redis_url: str, examples: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "put", str(examples / "approval_deploy.yaml"),
                 "--redis", redis_url]) == 0
    capsys.readouterr()
    assert main(["runs", "submit", "approval_deploy", "--input", "{not json",
                 "--redis", redis_url]) == 2
    assert "--input is not valid JSON" in _one_line_error(capsys)


def test_approving_a_step_that_is_not_waiting(redis_url: str, examples: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workflows", "put", str(examples / "approval_deploy.yaml"),
                 "--redis", redis_url]) == 0
    assert main(["runs", "submit", "approval_deploy", "--redis", redis_url]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["runs", "approve", run_id, "approve", "--redis", redis_url]) == 2
    assert run_id in _one_line_error(capsys)
    assert main(["runs", "approve", run_id, "no_such_step", "--redis", redis_url]) == 2
    assert "no_such_step" in _one_line_error(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["serve", "--listen", "http://x"], "--listen 'http://x'"),
    (["serve", "--listen", "ipc:///tmp/x.ipc", "--http", "localhost:notaport"], "--http"),
    (["worker", "--connect", "ipc:///tmp/x.ipc", "--handlers", "no_such_module_xyz"],
     "no_such_module_xyz"),
    (["worker", "--connect", "ipc:///tmp/x.ipc", "--handlers", "m", "--concurrency", "0"],
     "--concurrency"),
    (["worker", "--connect", "ipc:///tmp/x.ipc", "--handlers", "m", "--prefetch", "-1"],
     "--prefetch"),
    (["serve", "--listen", "ipc:///tmp/x.ipc", "--lease-ttl", "0"], "--lease-ttl"),
    (["worker", "--connect", "nng://x", "--handlers", "m"], "--connect 'nng://x'"),
    (["runs", "wait", "r", "--timeout", "0"], "--timeout"),
    (["runs", "submit", "wf", "--label", "novalue"], "--label 'novalue'"),
])
def test_usage_errors(argv: list[str], needle: str, redis_url: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--redis", redis_url]) == 2
    assert needle in _one_line_error(capsys)
