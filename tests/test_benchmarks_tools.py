"""The measuring tools beside the harness: ``benchmarks.profile`` (self time by area),
``benchmarks.switches`` (task switches per step) and ``benchmarks.instructions`` (machine
instructions per step, by valgrind), each driven at a tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.workloads import CHAIN_STEPS

ROOT = Path(__file__).resolve().parent.parent


def test_profile_attributes_self_time_to_areas_and_writes_json(tmp_path: Path) -> None:
    from benchmarks.profile import area_of
    from benchmarks.profile import main as profile_main

    assert area_of("/x/cordtrio/core/ready.py") == "core (decide)"
    assert area_of("/x/cordtrio/engine/run_task.py") == "engine shell"
    assert area_of("/venv/site-packages/trio/_core/_run.py") == "trio"
    assert area_of("~") == "builtins"
    assert area_of("/venv/site-packages/redis/asyncio/connection.py") == "redis-py"
    out = tmp_path / "profile.json"
    assert profile_main(["--workload", "w1", "--backend", "memory", "--size", "3",
                         "--top", "5", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["workload"], data["backend"], data["size"], data["steps"]) == (
        "w1", "memory", 3, 3 * CHAIN_STEPS)
    assert len(data["top"]) == 5
    assert [r["self_s"] for r in data["top"]] == sorted(
        (r["self_s"] for r in data["top"]), reverse=True)
    shares = {r["area"]: r["self_pct"] for r in data["areas"]}
    assert shares["core (decide)"] > 0 and shares["engine shell"] > 0
    assert abs(sum(shares.values()) - 100) < 0.01
    assert data["timer"] == "wall"
    assert profile_main(["--workload", "w1", "--backend", "memory", "--size", "3",
                         "--top", "5", "--cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["timer"] == "thread CPU" and data["total_self_s"] > 0


def test_switches_counts_task_switches_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.switches import main as switches_main

    assert switches_main(["--workload", "w1", "--backend", "memory", "--size", "3"]) == 0
    out = capsys.readouterr().out
    assert "15 steps" in out and "task switches per step" in out


def test_instructions_per_step_are_a_large_drive_less_a_small_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """valgrind counts the instructions of two drives in the checkout (its own harness, run
    by the drive script's path); a step's are their difference over the steps between."""
    from benchmarks import instructions
    from cordtrio.backends.redis.testing import in_ci

    if instructions.valgrind() is None:
        message = "valgrind is not installed (apt-get install valgrind)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert instructions.W1_STEPS == CHAIN_STEPS
    figures = instructions.per_step(str(ROOT), sys.executable, 2, 6)
    assert figures["instructions_large"] > figures["instructions_small"] > 0
    assert figures["instructions_per_step"] == pytest.approx(
        (figures["instructions_large"] - figures["instructions_small"]) / (4 * CHAIN_STEPS))
    with pytest.raises(RuntimeError, match=f"{tmp_path}: valgrind run failed"):
        instructions.count(str(tmp_path), sys.executable, 2)  # no harness there
    monkeypatch.setattr(instructions, "valgrind", lambda: None)
    with pytest.raises(SystemExit):
        instructions.main([])  # says that valgrind is missing
    with pytest.raises(RuntimeError, match="valgrind is not installed"):
        instructions.count(str(ROOT), sys.executable, 2)


def test_switches_measures_the_engine_on_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.switches import main as switches_main

    assert switches_main(["--workload", "w1", "--backend", "redis", "--size", "2"]) == 0
    out = capsys.readouterr().out
    assert "10 steps" in out and "µs CPU per step" in out
