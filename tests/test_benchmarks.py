"""Smoke test of the benchmark harness (``python -m benchmarks``): every workload at a tiny
size on the in-memory backend through the harness's own functions, asserting the figures it
reports (not their values: timing is not tested). W5's 1 s backoffs pass under the
autojump clock."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main, parse_sizes, plan
from benchmarks.against import Against, against_rows, sample_from_json
from benchmarks.measure import Sample, command_delta, run_sample
from benchmarks.report import ratio_rows, summarize
from benchmarks.workloads import BRANCH_STEPS, BRANCHES, CHAIN_STEPS, WORKLOADS

TINY = {"w1": 4, "w2": 7, "w3": 2, "w4": 5, "w5": 3}
STEPS = {"w1": 4 * CHAIN_STEPS, "w2": 7 + 1, "w3": 2 * (BRANCHES * BRANCH_STEPS + 1),
         "w4": 2 * 5, "w5": 3 * CHAIN_STEPS}
RUNS = {"w1": 4, "w2": 1, "w3": 2, "w4": 5, "w5": 3}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
async def test_each_workload_runs_on_memory_and_reports_its_figures(
        name: str, autojump_clock: object) -> None:
    progress: list[int] = []
    sample = await run_sample(WORKLOADS[name], "memory", TINY[name], on_progress=progress.append)
    assert (sample.workload, sample.backend, sample.size) == (name, "memory", TINY[name])
    assert (sample.steps, sample.runs) == (STEPS[name], RUNS[name])
    assert sample.seconds > 0 and sample.steps_per_s > 0 and sample.runs_per_s > 0
    assert sample.latency_p50_ms is not None and sample.latency_p99_ms is not None
    assert 0 <= sample.latency_p50_ms <= sample.latency_p99_ms
    assert sample.redis_commands == {} and sample.redis_commands_per_step is None
    assert progress and progress[0] == 0
    assert sample.extra["cpu_us_per_step_engine"] > 0  # the engine process's own CPU
    assert "cpu_us_per_step_worker" not in sample.extra  # the worker is in process
    assert "cpu_us_per_step_redis" not in sample.extra
    if name == "w4":
        assert sample.extra["active_run_tasks_while_waiting"] >= 0
        assert "rss_per_waiting_run_bytes" in sample.extra
        assert sample.extra["heap_bytes_per_waiting_run"] > 0  # the runs live in the store
        assert sample.extra["park_seconds"] > 0
        assert "server_bytes_per_waiting_run" not in sample.extra  # no server in memory
    if name == "w5":
        assert sample.extra["attempts"] == 2 * STEPS["w5"]


def test_main_writes_json_with_medians_over_repetitions(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    assert main(["--workload", "w1,w2", "--backend", "memory", "--size", "w1=3",
                 "--size", "w2=5,9", "--repeat", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["workload"], r["size"]): r for r in data["results"]}
    assert set(rows) == {("w1", 3), ("w2", 5), ("w2", 9)}
    for row in rows.values():
        assert row["backend"] == "memory" and row["repetitions"] == 2
        assert row["steps_per_s_min"] <= row["steps_per_s_median"] <= row["steps_per_s_max"]
        assert row["latency_p50_ms_median"] is not None
        assert row["peak_rss_mib_max"] is None or row["peak_rss_mib_max"] > 0
        assert len(row["samples"]) == 2
    assert rows[("w2", 9)]["samples"][0]["steps"] == 10
    assert data["ratios"] == [] and data["notes"] == []


def test_sizes_and_plan() -> None:
    sizes = parse_sizes(["10,20", "w2=5", "w2@redis=7"], ["w1", "w2"])
    assert sizes == {("w1", ""): (10, 20), ("w2", ""): (5,), ("w2", "redis"): (7,)}
    assert [(w.name, b, n) for w, b, n in plan(["w1", "w2"], ["memory", "redis"], sizes)] == [
        ("w1", "memory", 10), ("w1", "memory", 20), ("w1", "redis", 10), ("w1", "redis", 20),
        ("w2", "memory", 5), ("w2", "redis", 7)]
    default = plan(["w2"], ["memory", "redis"], {})
    assert [(b, n) for _, b, n in default] == [
        ("memory", 1000), ("memory", 10000), ("redis", 1000)]  # smaller defaults on Redis
    with pytest.raises(Exception, match="unknown workload 'w9'"):
        parse_sizes(["w9=1"], ["w1"])


def test_redis_command_counts_and_peer_ratios() -> None:
    assert command_delta({"hset": 5, "info": 1}, {"hset": 9, "get": 2, "info": 3}) == {
        "hset": 4, "get": 2}
    ours = Sample("w1", "redis", 10, 50, 10, 1.0, redis_commands={"hset": 100, "get": 50})
    theirs = Sample("w1", "celery (solo)", 10, 50, 10, 2.0)
    summaries = summarize([ours, theirs])
    assert summaries[0].commands_per_step() == {"hset": 2.0, "get": 1.0}
    [row] = ratio_rows(summaries, ["celery (solo)"])
    assert row["cordtrio_backend"] == "redis" and row["ratio"] == pytest.approx(2.0)
    # other sizes are compared only when the peer has no exact match anywhere (a capped peer)
    bigger = Sample("w1", "memory", 1000, 5000, 1000, 1.0)
    capped = Sample("w1", "prefect (local)", 7, 35, 7, 35.0)
    rows = ratio_rows(summarize([ours, bigger, theirs, capped]),
                      ["celery (solo)", "prefect (local)"])
    assert [(r["peer"], r["cordtrio_backend"], r["size"], r["peer_size"]) for r in rows] == [
        ("celery (solo)", "redis", 10, 10),
        ("prefect (local)", "redis", 10, 7), ("prefect (local)", "memory", 1000, 7)]


def test_peer_ratios_per_round_pair_the_samples_taken_side_by_side() -> None:
    """The machine's load drifts: the median of the per-round ratios pairs each sample
    with the peer's of the same round, where the ratio of the medians does not."""
    ours = [Sample("w1", "redis", 10, 100, 10, 100 / rate, round=r)
            for r, rate in enumerate((100.0, 200.0, 300.0))]
    theirs = [Sample("w1", "celery (solo)", 10, 100, 10, 100 / rate, round=r)
              for r, rate in enumerate((10.0, 40.0, 30.0))]
    [row] = ratio_rows(summarize([*ours, *theirs]), ["celery (solo)"])
    assert row["ratio"] == pytest.approx(200 / 30)  # the medians'
    assert row["ratio_per_round"] == pytest.approx(10.0)  # median of 10, 5 and 10
    unpaired = [Sample("w1", "celery (solo)", 10, 100, 10, 1.0)]  # no round
    [row] = ratio_rows(summarize([*ours, *unpaired]), ["celery (solo)"])
    assert row["ratio_per_round"] is None


def test_an_invocation_measures_round_by_round_peers_included(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round measures every cordtrio sample, then each peer's in a session of the
    round's own (the next round's samples flush the server a peer's workers would use);
    every sample says its round."""
    import contextlib

    import benchmarks.__main__ as harness

    log: list[tuple[str, int]] = []
    real_run_sample = harness.run_sample

    async def logged_run_sample(workload: Any, backend: str, size: int,
                                *args: Any) -> Sample:
        log.append(("cordtrio", size))
        return await real_run_sample(workload, backend, size, *args)

    class FakeSession:
        def run(self, workload: str, size: int, repeat: int) -> list[Sample]:
            log.append(("peer", size))
            return [Sample(workload, "fake", size, size * CHAIN_STEPS, size, 1.0)
                    for _ in range(repeat)]

    class FakePeer:
        name = key = "fake"
        workloads = ("w1",)
        needs_redis = False

        def unavailable(self) -> str | None:
            return None

        @contextlib.contextmanager
        def session(self, redis: Any, note: Any) -> Any:
            log.append(("session", 0))
            yield FakeSession()

    monkeypatch.setattr(harness, "run_sample", logged_run_sample)
    monkeypatch.setattr(harness, "all_peers", lambda: {"fake": FakePeer})
    out = tmp_path / "rounds.json"
    assert main(["--workload", "w1", "--backend", "memory", "--size", "w1=3", "--repeat",
                 "2", "--peers", "fake", "--out", str(out)]) == 0
    assert log == [("cordtrio", 3), ("session", 0), ("peer", 3)] * 2
    data = json.loads(out.read_text())
    for result in data["results"]:
        assert [sample["round"] for sample in result["samples"]] == [0, 1]
    [row] = data["ratios"]
    assert row["peer"] == "fake" and row["ratio_per_round"] > 0


def test_a_peer_workload_that_fails_is_dropped_alone_and_pairs_follow_rounds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's workload that fails leaves its other workloads measured in every round; and
    this/other ratios pair samples by round, so a missing one shifts no later pair."""
    import contextlib

    import benchmarks.__main__ as harness

    runs: list[tuple[str, int]] = []

    class FakeSession:
        def run(self, workload: str, size: int, repeat: int) -> list[Sample]:
            runs.append((workload, size))
            if workload == "w2":
                raise RuntimeError("no chord today")
            return [Sample(workload, "fake", size, size * CHAIN_STEPS, size, 1.0)]

    class FakePeer:
        name = key = "fake"
        workloads = ("w1", "w2")
        needs_redis = False

        def unavailable(self) -> str | None:
            return None

        @contextlib.contextmanager
        def session(self, redis: Any, note: Any) -> Any:
            yield FakeSession()

    monkeypatch.setattr(harness, "all_peers", lambda: {"fake": FakePeer})
    out = tmp_path / "peer.json"
    assert main(["--workload", "w1,w2", "--backend", "memory", "--size", "w1=2", "--size",
                 "w2=3", "--repeat", "2", "--peers", "fake", "--out", str(out)]) == 0
    assert runs == [("w1", 2), ("w2", 3), ("w1", 2)]  # w2 dropped after its failure
    data = json.loads(out.read_text())
    assert any("w2 size 3 failed" in n for n in data["notes"])
    [fake] = [r for r in data["results"] if r["backend"] == "fake"]
    assert [sample["round"] for sample in fake["samples"]] == [0, 1]

    ours = [Sample("w1", "redis", 10, 50, 10, s, round=r)
            for r, s in enumerate((1.0, 2.0, 4.0))]
    theirs = [Sample("w1", "redis (against)", 10, 50, 10, 2.0, round=r) for r in (0, 2)]
    [row] = against_rows(summarize([*ours, *theirs]))
    assert row["ratios"] == [2.0, 0.5]  # rounds 0 and 2; round 1 has no pair


def test_a_relative_interpreter_is_made_absolute_and_a_failed_version_says_why(
        tmp_path: Path) -> None:
    """Another checkout's processes run in its directory: a relative interpreter path is
    resolved first. A version whose process fails names its checkout and its error."""
    from benchmarks.against import python_path
    from benchmarks.floor import own_process_ratio

    assert python_path("venv/bin/python") == str(Path.cwd() / "venv/bin/python")
    assert python_path("python3") == "python3"
    with pytest.raises(RuntimeError, match=f"(?s){tmp_path}: exit 1: .*ModuleNotFoundError"):
        own_process_ratio(str(tmp_path), sys.executable, 2)  # no harness there


def test_process_cpu_is_read_from_proc_and_unknown_processes_read_as_none() -> None:
    import os

    from benchmarks.measure import process_cpu_seconds

    mine = process_cpu_seconds(os.getpid())
    assert mine is not None and mine > 0  # this interpreter has imported a lot by now
    assert process_cpu_seconds(2**22 + 1) is None  # above Linux's pid_max limit


def test_cpu_per_step_of_the_engine_worker_and_redis_processes_on_redis_nng(
        tmp_path: Path) -> None:
    import trio

    from benchmarks.measure import RedisStats
    from benchmarks.report import workload_table
    from cordtrio.backends.redis.testing import run_redis_server

    with run_redis_server(str(tmp_path)) as server:
        stats = RedisStats(server.url)
        try:
            sample = trio.run(run_sample, WORKLOADS["w1"], "redis-nng", 20, stats)
        finally:
            stats.close()
    assert sample.steps == 20 * CHAIN_STEPS
    cpu = {k: v for k, v in sample.extra.items() if k.startswith("cpu_us_per_step_")}
    assert set(cpu) == {"cpu_us_per_step_engine", "cpu_us_per_step_worker",
                        "cpu_us_per_step_redis"}
    assert cpu["cpu_us_per_step_engine"] > 0 and cpu["cpu_us_per_step_redis"] > 0
    assert cpu["cpu_us_per_step_worker"] >= 0  # clock ticks of 10 ms: a short drive may read 0
    [summary] = summarize([sample])
    table = workload_table("w1", "chains", [summary])
    cells = [cell for column in table.columns for cell in column.cells]
    assert f"{cpu['cpu_us_per_step_engine']:,.0f} / " in " ".join(map(str, cells))


def test_against_measures_two_checkouts_alternated_and_reports_their_ratios(
        tmp_path: Path) -> None:
    """``--against`` with this checkout as the other one: every repetition measured by both
    harnesses (fresh processes), labelled apart, with this/other ratios in the JSON."""
    out = tmp_path / "versus.json"
    root = str(Path(__file__).resolve().parents[1])
    assert main(["--workload", "w1", "--backend", "memory", "--size", "w1=3", "--repeat",
                 "2", "--against", root, "--against-python", sys.executable,
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["notes"] == []
    backends = {r["backend"]: r for r in data["results"]}
    assert set(backends) == {"memory", "memory (against)"}
    assert all(r["repetitions"] == 2 and r["samples"][0]["steps"] == 3 * CHAIN_STEPS
               for r in backends.values())
    [row] = data["against"]
    assert (row["workload"], row["backend"], row["size"]) == ("w1", "memory", 3)
    assert row["ratio_of_medians"] == pytest.approx(
        backends["memory"]["steps_per_s_median"]
        / backends["memory (against)"]["steps_per_s_median"])
    assert len(row["ratios"]) == 2 and row["median_of_ratios"] > 0
    assert data["settings"]["against"] == root


def test_against_pairs_repetitions_and_reports_a_failed_checkout(tmp_path: Path) -> None:
    ours = [Sample("w1", "redis", 10, 50, 10, s) for s in (1.0, 2.0, 4.0)]
    theirs = [Sample("w1", "redis (against)", 10, 50, 10, s) for s in (2.0, 2.0, 2.0)]
    other_size = Sample("w1", "redis (against)", 20, 100, 20, 1.0)
    [row] = against_rows(summarize([*ours, *theirs, other_size]))
    assert row["ratios"] == [2.0, 1.0, 0.5] and row["median_of_ratios"] == 1.0
    assert row["ratio_of_medians"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="no w1 sample on redis at size 10"):
        sample_from_json({"results": [], "notes": ["backends redis skipped"]}, "w1", "redis",
                         10)
    broken = Against(str(tmp_path), sys.executable)  # no harness there
    with pytest.raises(RuntimeError, match=f"{tmp_path}: exit 1"):
        broken.sample("w1", "memory", 3)
