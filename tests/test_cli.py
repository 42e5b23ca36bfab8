"""Specification of the ``cordtrio`` command line, run against the shipped examples.

``main()`` calls ``trio.run`` itself, so these are plain (sync) tests: pytest-trio only
runs ``async def`` tests inside its loop. They run from the repository root, where
``--handlers examples.<module>`` is importable (the command puts the current directory on
``sys.path``), exactly as the README tells a newcomer to do.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import cordtrio.cli
from cordtrio.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = "examples/document_pipeline.yaml"
DOCS_HANDLERS = "examples.document_handlers"
DEPLOY = "examples/approval_deploy.yaml"
DEPLOY_HANDLERS = "examples.deploy_handlers"
FLAKY = "examples/flaky_call.yaml"
FLAKY_HANDLERS = "examples.flaky_handlers"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["run", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cordtrio: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


# ------------------------------------------------------------------------------ run


def test_document_pipeline_reports_every_step(capsys):
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS]) == 0
    out = capsys.readouterr().out
    for step in ("fetch", "extract", "check", "summarize", "notify"):
        assert step in out
    assert "extract[2]" in out  # the retried document is listed in the summary
    assert "step_retry_scheduled" in out  # ... and its retry is in the timeline
    assert "Summarized 8 documents" in out  # the notify step's alert
    assert "succeeded" in out


def test_quiet_prints_only_the_outcome_line(capsys):
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS, "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out
    assert lines[0].startswith("run ") and "of 'document_pipeline': succeeded in " in lines[0]
    assert captured.err == ""


def test_quiet_failure_adds_the_step_errors_on_stderr(capsys):
    code = main(["run", DEPLOY, "--handlers", DEPLOY_HANDLERS, "--approve-all", "--quiet",
                 "--input", '{"fail_deploy": true}'])
    assert code == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    assert ": failed in " in captured.out and "step 'deploy'" in captured.out
    assert "cordtrio: step 'deploy' failed: " in captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cordtrio.cli.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == "cordtrio 0.1.0"
    assert main(["--version"]) == 0


def test_document_pipeline_json_is_the_final_run(capsys):
    code, run = run_json(capsys, DOCS, "--handlers", DOCS_HANDLERS,
                         "--input", '{"source": "archive", "count": 5}')
    assert code == 0
    assert run["status"] == "succeeded"
    assert run["input"] == {"source": "archive", "count": 5}
    extract = run["steps"]["extract"]
    assert len(extract["children"]) == 5
    assert extract["children"]["extract[2]"]["attempts"] == 2  # failed once, retried
    assert run["context"]["summary"]["documents"] == 5
    assert run["context"]["summary"]["source"] == "archive"


def test_input_can_come_from_a_file(capsys, tmp_path):
    data = tmp_path / "input.json"
    data.write_text('{"count": 2}')
    code, run = run_json(capsys, DOCS, "--handlers", DOCS_HANDLERS, "--input", f"@{data}")
    assert code == 0
    assert len(run["steps"]["extract"]["children"]) == 2


def test_plain_progress_lines_when_stdout_is_not_a_tty(capsys):
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS, "--input", '{"count": 3}']) == 0
    out = capsys.readouterr().out
    assert "dispatch  extract[0]" in out
    assert "retry     extract[2]" in out
    # the failure says what kind it was: the exception class the worker reported
    assert "attempt 1 failed: RuntimeError: transient OCR failure on doc-3" in out
    assert "\x1b[" not in out  # no escape codes in a log file


def test_live_display_on_a_terminal(capsys, monkeypatch):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(cordtrio.cli, "_console", lambda: console)
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS]) == 0
    text = screen.getvalue()
    assert "cordtrio document_pipeline" in text
    assert "5 done  0 running  0 failed  0 waiting  0 pending" in text
    assert "8/8" in text and "━" in text  # the for-each progress bar, full


def test_approval_waits_without_approve_all(capsys):
    assert main(["run", DEPLOY, "--handlers", DEPLOY_HANDLERS, "--quiet"]) == 3
    captured = capsys.readouterr()
    assert "waiting" in captured.out
    assert "--approve-all" in captured.err
    assert "Traceback" not in captured.err


def test_approval_succeeds_with_approve_all(capsys):
    code, run = run_json(capsys, DEPLOY, "--handlers", DEPLOY_HANDLERS, "--approve-all")
    assert code == 0
    assert run["status"] == "succeeded"
    assert run["steps"]["approve"]["status"] == "succeeded"
    assert "rollback" not in run["steps"]  # the on_error handler was never triggered


def test_failed_deploy_runs_the_rollback_and_exits_1(capsys):
    code, run = run_json(capsys, DEPLOY, "--handlers", DEPLOY_HANDLERS, "--approve-all",
                         "--input", '{"fail_deploy": true}')
    assert code == 1
    assert run["status"] == "failed"
    assert run["steps"]["deploy"]["status"] == "failed"
    assert run["steps"]["deploy"]["attempts"] == 2
    assert run["steps"]["rollback"]["status"] == "succeeded"


def test_flaky_call_times_out_once_then_succeeds(capsys):
    code, run = run_json(capsys, FLAKY, "--handlers", FLAKY_HANDLERS)
    assert code == 0
    assert run["steps"]["call"]["attempts"] == 2
    assert run["context"]["steps"]["call"]["output"]["attempt"] == 2


def test_timeout_ends_the_run_timed_out(capsys):
    code, run = run_json(capsys, FLAKY, "--handlers", FLAKY_HANDLERS, "--timeout", "0.3")
    assert code == 1
    assert run["status"] == "timed_out"
    assert any(e["type"] == "run_status" and e["status"] == "timed_out"
               for e in run["timeline"])


def test_json_includes_the_timeline_with_rfc3339_times(capsys):
    code, run = run_json(capsys, FLAKY, "--handlers", FLAKY_HANDLERS)
    assert code == 0
    types = [e["type"] for e in run["timeline"]]
    assert types[0] == "run_status" and "step_dispatched" in types
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in run["timeline"])
    assert run["created_at"].endswith("Z")


def test_handlers_can_be_a_file_path(capsys):
    code, run = run_json(capsys, DEPLOY, "--handlers", "examples/deploy_handlers.py",
                         "--approve-all")
    assert code == 0
    assert run["steps"]["deploy"]["status"] == "succeeded"


# ------------------------------------------------------------------------- errors


def test_bad_input_json_is_a_one_line_error(capsys):
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS, "--input", "{not json"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--input", "not valid JSON")


def test_input_must_be_an_object(capsys):
    assert main(["run", DOCS, "--handlers", DOCS_HANDLERS, "--input", "[1, 2]"]) == 2
    assert_one_line_error(capsys.readouterr().err, "JSON object")


def test_unknown_handlers_module(capsys):
    assert main(["run", DOCS, "--handlers", "no_such_handlers_module"]) != 0
    assert_one_line_error(capsys.readouterr().err, "no_such_handlers_module")


def test_handlers_module_without_handlers_attribute(capsys):
    assert main(["run", DOCS, "--handlers", "json"]) != 0
    assert_one_line_error(capsys.readouterr().err, "'json'", "HANDLERS")


def test_topic_without_a_handler(capsys):
    assert main(["run", DOCS, "--handlers", FLAKY_HANDLERS]) != 0
    assert_one_line_error(capsys.readouterr().err, "'fetch'", "job.docs.fetch")


def test_worker_steps_need_handlers(capsys):
    assert main(["run", DOCS]) != 0
    assert_one_line_error(capsys.readouterr().err, "--handlers")


def test_missing_workflow_file(capsys):
    assert main(["run", "examples/no_such_workflow.yaml"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no_such_workflow.yaml")


def test_broken_module_is_reported_in_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "broken_handlers.py").write_text("HANDLERS = {\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", DOCS, "--handlers", "broken_handlers"]) == 2
    assert_one_line_error(capsys.readouterr().err, "broken_handlers", "SyntaxError")


# --------------------------------------------------------------- validate and graph


def test_validate_ok(capsys):
    assert main(["validate", DOCS]) == 0
    assert capsys.readouterr().out.strip() == "ok"


BROKEN = """\
id: broken
steps:
  fetch:
    topic: job.fetch
  load:
    topic: job.load
    depends_on: [fetch, transform]
"""


def test_validate_broken_workflow_names_the_step(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    assert main(["validate", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "'load'", "'transform'")


def test_run_of_a_broken_workflow_is_exit_2(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    assert main(["run", str(path), "--handlers", DOCS_HANDLERS]) == 2
    assert_one_line_error(capsys.readouterr().err, "'load'")


def test_validate_rejects_a_misspelled_key(capsys, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(BROKEN.replace("depends_on", "depend_on"))
    assert main(["validate", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "typo.yaml", "step 'load'",
                          "'depend_on'", "did you mean 'depends_on'?")


def test_yaml_syntax_error_shows_file_line_column_and_caret(capsys, tmp_path):
    path = tmp_path / "syntax.yaml"
    path.write_text("id: wf\nsteps:\n  a:\n    topic: t\n    retry: {max_retries: 3}: x\n")
    for command in (["validate", str(path)], ["run", str(path)]):
        assert main(command) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("cordtrio: error: workflow file ")
        assert "syntax.yaml" in lines[0] and "line 5, column 28" in lines[0]
        assert lines[1].strip() == "retry: {max_retries: 3}: x"
        assert lines[2].strip() == "^"


def test_graph_mermaid_has_the_edges(capsys):
    assert main(["graph", DEPLOY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD")
    for edge in ("build --> approve", "approve --> deploy", "deploy --> announce",
                 "deploy -. on_error .-> rollback"):
        assert edge in out


def test_graph_dot(capsys):
    assert main(["graph", DOCS, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "document_pipeline" {')
    assert '"fetch" -> "extract";' in out
    assert '"summarize" -> "notify";' in out


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


# ----------------------------------------------------------------------- as a process


def test_python_m_cordtrio_runs_the_readme_example():
    # The README's command, from the repository root, with nothing on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "cordtrio", "run", DOCS, "--handlers", DOCS_HANDLERS,
         "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout


# ------------------------------------------------------------- the README's snippets


async def test_readme_testing_example_runs_on_the_autojump_clock(autojump_clock, monkeypatch):
    # README "Testing your workflows": hangs, timeouts and backoffs cost no real time.
    monkeypatch.syspath_prepend(str(ROOT))
    from cordtrio import load_workflow, open_engine, open_worker
    from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
    from examples.flaky_handlers import HANDLERS

    store, bus, payloads = MemoryStore(), MemoryBus(), MemoryPayloadStore()
    await store.save_workflow(load_workflow("examples/flaky_call.yaml"))
    async with (
        open_engine(store, bus, payloads=payloads) as engine,
        open_worker(bus, payloads, HANDLERS),
    ):
        run = await engine.wait_run(await engine.submit("flaky_call"))
    assert run.status == "succeeded"
    assert run.steps["call"].attempts == 2


def test_readme_embedding_example_runs(capsys):
    # README "Embedding": the snippet as written, run as a script.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Embedding", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.startswith("succeeded [")
    assert "thumb-a.png" in out and out.index("thumb-a.png") < out.index("thumb-c.png")
