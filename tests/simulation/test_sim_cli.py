"""``cordtrio simulate``: seeds with a summary table (exit 0), a failing seed with its trace
and the command that replays it (exit 1), the user's own workflow, and usage errors (2)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

import cordtrio.core.results as results
from cordtrio.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_twenty_seeds_green(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--seeds", "20"]) == 0
    out = capsys.readouterr().out
    for row in ("scenarios", "runs", "steps dispatched", "faults: drop", "faults: store_failure",
                "engine restarts", "virtual time", "real time", "scenarios/s"):
        assert row in out, row
    assert "20 passed" in out
    assert "ok: 20 scenarios, every invariant held" in out


def test_two_engines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--seeds", "5", "--engines", "2", "--faults", "heavy"]) == 0
    out = capsys.readouterr().out
    assert "5 passed" in out and "faults: engine_crash" in out


def test_no_faults_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--seeds", "3", "--start", "50", "--faults", "none",
                 "--crashes", "0"]) == 0
    out = capsys.readouterr().out
    assert "faults injected" in out and "3 passed" in out


def _one_retry_too_many(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_too_many(retry: Any, attempts: int) -> bool:
        return retry is not None and retry.max_retries > 0 and attempts <= retry.max_retries + 1

    monkeypatch.setattr(results, "retry_allowed", one_too_many)


def test_a_broken_core_fails_with_seed_trace_and_the_replay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    _one_retry_too_many(monkeypatch)
    trace_file = tmp_path / "trace.txt"
    assert main(["simulate", "--seeds", "50", "--start", "1000", "--faults", "heavy",
                 "--trace-lines", "5", "--trace-out", str(trace_file)]) == 1
    out = capsys.readouterr().out
    assert "FAILED seed" in out and "invariant attempts violated" in out
    assert "max_retries + 1" in out
    # the run, the step, its job id and the trace lines about them
    assert re.search(r"run run-\S+ step s\S+ job run-\S+@\d+: ", out)
    assert "trace lines that led there:\n    #" in out
    assert "last 5 of" in out and "!! VIOLATION attempts" in out
    replay = next(line for line in out.splitlines() if line.startswith("reproduce: "))
    command = shlex.split(replay.removeprefix("reproduce: "))
    assert command[:5] == ["cordtrio", "simulate", "--seeds", "1", "--start"]
    seed = int(command[5])
    assert 1000 <= seed < 1050
    assert command[6:] == ["--faults", "heavy"]
    assert f"seed {seed} (attempts)" in out  # the summary names it too
    trace = trace_file.read_text().splitlines()  # the whole trace, not just the excerpt
    assert len(trace) > 5 and any("!! VIOLATION attempts" in line for line in trace)
    # the printed command replays exactly that seed, and fails the same way
    assert main(command[1:]) == 1
    again = capsys.readouterr().out
    assert f"FAILED seed {seed}:" in again and "1 failed" in again
    assert replay in again


def test_an_error_escaping_a_seed_is_a_failure_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import cordtrio.cli.simulate as command
    from cordtrio.testing import simulate

    def explode_on_7(seed: int, **options: Any) -> Any:
        if seed == 7:
            raise RuntimeError("engine blew up [badly]")
        return simulate(seed, **options)

    monkeypatch.setattr(command, "simulate", explode_on_7)
    assert main(["simulate", "--seeds", "10", "--store", "memory", "--runs", "2"]) == 1
    out = capsys.readouterr().out
    assert "seed 7 raised RuntimeError: engine blew up [badly]" in out
    assert "7 passed, 1 failed" in out
    assert "reproduce: cordtrio simulate --seeds 1 --start 7 --faults swarm --runs 2" in out


def test_the_users_workflow_and_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    workflow = str(ROOT / "examples" / "document_pipeline.yaml")
    handlers = str(ROOT / "examples" / "document_handlers.py")
    assert main(["simulate", "--seeds", "4", "--workflow", workflow, "--handlers", handlers,
                 "--input", '{"source": "inbox", "count": 3}', "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 passed" in out
    runs = re.search(r"runs\s+(\d+) \(", out)
    assert runs is not None and int(runs.group(1)) >= 8  # 4 seeds x 2 runs (+ reruns)


def test_a_workflow_without_timeouts_ends_under_heavy_faults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    wf = tmp_path / "naive.yaml"
    wf.write_text("id: naive\nsteps:\n  call:\n    topic: job.call\n"
                  "  next:\n    topic: job.call\n    depends_on: [call]\n")  # no timeout_sec
    assert main(["simulate", "--seeds", "30", "--faults", "heavy", "--workflow", str(wf),
                 "--input", '{"n": 1}', "--bound", "3600"]) == 0
    out = capsys.readouterr().out
    assert "30 passed" in out and "worker_crash" in out


def test_a_failing_user_workflow_replays_with_its_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    wf = tmp_path / "naive.yaml"
    wf.write_text("id: naive\nsteps:\n  call:\n    topic: job.call\n")  # no timeout_sec
    handlers = tmp_path / "stuck_handlers.py"
    handlers.write_text("import trio\n\n\nasync def call(job):\n"
                        "    await trio.sleep_forever()  # a handler that never returns\n\n\n"
                        "HANDLERS = {'job.call': call}\n")
    assert main(["simulate", "--seeds", "3", "--faults", "light", "--workflow", str(wf),
                 "--handlers", str(handlers), "--input", '{"n": 1}', "--bound", "3600"]) == 1
    out = capsys.readouterr().out
    assert "invariant liveness violated" in out and "timeout_sec" in out
    replay = next(line for line in out.splitlines() if line.startswith("reproduce: "))
    assert f"--workflow {wf}" in replay and """--input '{"n":1}'""" in replay
    assert "--bound 3600" in replay


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--bound", "0"], "--bound must be positive"),
    (["--handlers", "x"], "--handlers and --input need --workflow"),
    (["--workflow", "/nonexistent.yaml"], "nonexistent"),
    (["--engines", "2", "--store", "fakeredis"], "--engines 2 needs --store memory"),
])
def test_usage_errors(argv: list[str], message: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_choice_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--faults", "medium"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_swarm_is_the_default_and_no_fault_turns_kinds_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--seeds", "4", "--no-fault", "drop", "--no-fault", "delay",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 passed" in out and "faults: drop" not in out and "faults: delay" not in out
    # under a preset too
    assert main(["simulate", "--seeds", "2", "--faults", "heavy", "--no-fault", "drop",
                 "--no-fault", "store_failure", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 passed" in out and "faults: drop" not in out
    assert "faults: store_failure" not in out and "faults: duplicate" in out
