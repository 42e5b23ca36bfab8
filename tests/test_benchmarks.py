"""Smoke test of the benchmark harness (``python -m benchmarks``): every workload at a tiny
size on the in-memory backend through the harness's own functions, asserting the figures it
reports (not their values: timing is not tested). W5's 1 s backoffs pass under the
autojump clock."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main, parse_sizes, plan
from benchmarks.against import Against, against_rows, sample_from_json
from benchmarks.measure import Sample, command_delta, run_sample
from benchmarks.peers.celery_bench import CeleryPeer
from benchmarks.report import ratio_rows, summarize
from benchmarks.workloads import BRANCH_STEPS, BRANCHES, CHAIN_STEPS, WORKLOADS

TINY = {"w1": 4, "w2": 7, "w3": 2, "w4": 5, "w5": 3}
STEPS = {"w1": 4 * CHAIN_STEPS, "w2": 7 + 1, "w3": 2 * (BRANCHES * BRANCH_STEPS + 1),
         "w4": 2 * 5, "w5": 3 * CHAIN_STEPS}
RUNS = {"w1": 4, "w2": 1, "w3": 2, "w4": 5, "w5": 3}
ROOT = Path(__file__).resolve().parent.parent


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


def test_a_peer_that_cannot_import_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # import celery -> ImportError
    reason = CeleryPeer().unavailable()
    assert reason is not None and "celery" in reason


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


def test_floor_drives_w1_shape_and_compares_with_cordtrio(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trio

    from benchmarks.floor import drive_floor
    from benchmarks.floor import main as floor_main
    from benchmarks.floor_core import drive_floor_core
    from benchmarks.floor_duties import drive_floor_duties
    from benchmarks.floor_program import WORKERS

    alone = trio.run(drive_floor, 3)
    duties = trio.run(drive_floor_duties, 3)  # every run and step finished, or it raises
    assert duties["steps"] == 3 * CHAIN_STEPS and duties["steps_per_s"] > 0
    design = trio.run(partial(drive_floor_duties, 3, design=True))
    assert design["steps"] == 3 * CHAIN_STEPS and design["steps_per_s"] > 0
    assert duties["workers"] == WORKERS and 1 <= design["workers"] < WORKERS  # grown
    with_core = trio.run(drive_floor_core, 3)  # every run succeeded, or it raises
    assert with_core["steps"] == 3 * CHAIN_STEPS and with_core["task_switches_per_step"] > 0
    assert alone["steps"] == 3 * CHAIN_STEPS
    assert alone["steps_per_s"] > 0 and alone["task_switches_per_step"] > 0
    out = tmp_path / "floor.json"
    assert floor_main(["--compare", "--rounds", "2", "--size", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["workload"], data["backend"], data["size"], data["rounds"]) == (
        "w1", "memory", 3, 2)
    samples = data["samples_steps_per_s"]
    assert set(samples) == {"floor", "floor, pool grown", "floor+duties",
                            "floor+duties, design", "floor+core", "cordtrio"}
    assert all(len(v) == 2 for v in samples.values())
    assert data["ratio_to_floor"]["floor"] == 1.0
    assert data["ratio_to_floor"]["cordtrio"] == pytest.approx(
        data["median_steps_per_s"]["cordtrio"] / data["median_steps_per_s"]["floor"])
    assert data["ratio_cordtrio_to_against"] is None
    assert set(data["median_of_round_ratios"]) == {
        "cordtrio/floor", "cordtrio/floor, pool grown", "floor+duties/floor",
        "floor+core/floor", "cordtrio/floor+duties", "floor+duties, design/floor",
        "cordtrio/floor+duties, design", "cordtrio/floor+core"}
    assert "x floor" in capsys.readouterr().out


def test_floor_comparisons_time_every_drive_without_an_instrument(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A Trio instrument runs on every task step (a tenth of the floor's time): the drives
    a comparison times carry none, as cordtrio's samples carry none; the floor alone still
    reports its task switches, counted in a drive of its own."""
    import trio

    from benchmarks.floor import drive_floor
    from benchmarks.floor import main as floor_main
    from benchmarks.floor_core import drive_floor_core

    assert trio.run(partial(drive_floor, 2, count_switches=False))[
        "task_switches_per_step"] is None
    assert trio.run(partial(drive_floor_core, 2, count_switches=False))[
        "task_switches_per_step"] is None
    added: list[object] = []
    real_add = trio.lowlevel.add_instrument

    def add(instrument: trio.abc.Instrument) -> None:
        added.append(instrument)
        real_add(instrument)

    monkeypatch.setattr(trio.lowlevel, "add_instrument", add)
    assert floor_main(["--compare", "--rounds", "1", "--size", "2"]) == 0
    assert floor_main(["--parts", "--rounds", "1", "--size", "2"]) == 0
    assert added == []
    assert floor_main(["--size", "2"]) == 0
    assert len(added) == 1  # the counted drive
    assert "task switches per step" in capsys.readouterr().out


def test_the_floor_program_loads_by_its_path_without_cordtrio_or_the_harness() -> None:
    """Another checkout's interpreter loads the floor program by its path (``floor_ratio``):
    it must import nothing of cordtrio or of this ``benchmarks`` package, and drive W1's
    shape alone."""
    code = (
        "import sys, functools, trio\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "import floor_ratio\n"
        "program = floor_ratio.load_floor_program()\n"
        "done = trio.run(functools.partial(program.drive_floor, 3, floor_ratio.W1_STEPS))\n"
        "assert done['steps'] == 3 * floor_ratio.W1_STEPS, done\n"
        "mine = [m for m in sys.modules if m.split('.')[0] in ('cordtrio', 'benchmarks')]\n"
        "assert not mine, mine\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_floor_ratios_measure_each_version_in_its_own_process(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--ratios`` runs ``floor_ratio.py`` in each checkout, by its interpreter (here:
    this checkout against itself), and reports each version's ratio to the floor."""
    from benchmarks.floor import main as floor_main
    from benchmarks.floor import ratios
    from benchmarks.floor_ratio import W1_STEPS

    assert W1_STEPS == CHAIN_STEPS
    result = ratios(1, 3, str(ROOT), sys.executable, report=lambda _: None)
    for version in result["versions"].values():
        assert len(version["floor_steps_per_s"]) == len(version["cordtrio_steps_per_s"]) == 1
        assert version["ratio_to_floor"] == pytest.approx(
            version["cordtrio_steps_per_s"][0] / version["floor_steps_per_s"][0])
    assert result["this_over_against"] == pytest.approx(
        result["versions"]["this"]["ratio_to_floor"]
        / result["versions"]["against"]["ratio_to_floor"])
    with pytest.raises(SystemExit):
        floor_main(["--ratios"])  # needs --against
    with pytest.raises(SystemExit):
        floor_main(["--ratios", "--compare", "--against", str(ROOT)])
    capsys.readouterr()


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


def test_floor_pool_grown_as_jobs_need_it_runs_w1_with_fewer_task_switches() -> None:
    import trio

    from benchmarks.floor import drive_floor
    from benchmarks.floor_program import WORKERS

    whole = trio.run(drive_floor, 50)
    grown = trio.run(partial(drive_floor, 50, grown=True))
    assert grown["steps"] == whole["steps"] == 50 * CHAIN_STEPS  # every run succeeded
    # Workers started at once each wait for a job (a switch per job); a pool grown as
    # needed takes buffered jobs without one, with a few workers.
    assert whole["workers"] == WORKERS and 1 <= grown["workers"] < WORKERS
    assert grown["task_switches_per_step"] <= whole["task_switches_per_step"]


def test_floor_parts_adds_cordtrio_parts_one_at_a_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trio

    from benchmarks.floor import PARTS
    from benchmarks.floor import main as floor_main
    from benchmarks.floor_core import drive_floor_core

    for options in PARTS.values():  # each carries the runs to success (or raises)
        assert trio.run(partial(drive_floor_core, 2, **options))["steps"] == 2 * CHAIN_STEPS
    out = tmp_path / "parts.json"
    assert floor_main(["--parts", "--rounds", "1", "--size", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["samples_steps_per_s"]) == {"floor", *PARTS, "cordtrio"}
    us = data["median_us_per_step"]
    added = data["us_per_step_added"]
    assert added["core (decide and the run's objects)"] == pytest.approx(
        us["floor+core"] - us["floor"])
    assert added["the engine's shell (bus, worker, envelopes, API)"] == pytest.approx(
        us["cordtrio"] - us["floor+core+store+payloads"])
    assert "µs per step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        floor_main(["--parts", "--compare"])


def test_switches_measures_the_engine_on_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.switches import main as switches_main

    assert switches_main(["--workload", "w1", "--backend", "redis", "--size", "2"]) == 0
    out = capsys.readouterr().out
    assert "10 steps" in out and "µs CPU per step" in out


class _Late(Exception):
    """What the fake results' ``get`` raises when its slice ends (Celery's TimeoutError)."""


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeResult:
    """A Celery result whose ``get`` answers after ``arrives_after`` slices, or never (its
    notification lost); each slice that ends without it advances the fake clock."""

    def __init__(self, task_id: str, clock: _FakeClock, arrives_after: float) -> None:
        self.id = task_id
        self.clock = clock
        self.slices_left = arrives_after
        self.gets = 0

    def get(self, *, timeout: float, disable_sync_subtasks: bool) -> object:
        self.gets += 1
        if self.slices_left <= 0:
            return {"ok": True}
        self.slices_left -= 1
        self.clock.now += timeout
        raise _Late


def _collect(results: list[_FakeResult], clock: _FakeClock, stored: dict[str, str],
             exit_reason: str | None = None, keys: list[int] | None = None) -> object:
    from benchmarks.peers.celery_wait import collect

    counts = iter(keys or [])
    return collect(results, stored_status=lambda tid: stored.get(tid, "PENDING"),
                   worker_exit=lambda: exit_reason,
                   progress=lambda: next(counts, 0), timeout_error=_Late,
                   timeout=600, stall=60, clock=clock)


def test_celery_results_whose_notification_is_lost_are_read_from_the_backend() -> None:
    from benchmarks.peers.celery_wait import SLICE, Collected

    clock = _FakeClock()
    slow = _FakeResult("slow", clock, arrives_after=3)  # notified after 3 slices
    lost = _FakeResult("lost", clock, arrives_after=math.inf)  # stored, never notified
    got = _collect([slow, lost], clock, stored={"lost": "SUCCESS"})
    assert got == Collected(results=2, read_stored=1)
    assert slow.gets == 4 and lost.gets == 2  # then handed back to Celery once
    assert clock.now == 5 * SLICE  # not the whole timeout (this fake never answers get)


def test_the_celery_peer_fails_fast_when_its_worker_exits_or_stalls() -> None:
    from benchmarks.peers.celery_wait import PeerStalled

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match=r"worker exited \(exit code 1; stderr: boom\)"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {}, "exit code 1; stderr: boom")
    assert clock.now < 1  # at the first slice, not after the timeout

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match=r"no celery progress for 60 s .* 1 of 2 results in, "
                                          r"waiting for task b \(state PENDING\)"):
        _collect([_FakeResult("a", clock, 0), _FakeResult("b", clock, math.inf)], clock, {})
    assert 60 < clock.now < 61

    clock = _FakeClock()  # the server's keys keep growing: the worker is getting on
    with pytest.raises(PeerStalled, match="not in after 600 s"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {}, keys=list(range(2000)))

    clock = _FakeClock()
    with pytest.raises(PeerStalled, match="task a ended FAILURE"):
        _collect([_FakeResult("a", clock, math.inf)], clock, {"a": "FAILURE"})


def test_floor_with_parts_makes_the_plain_calls_the_engine_makes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``floor+core+store+payloads`` carries cordtrio's real parts as the engine calls them
    in process: every step writes its changes with ``save_run_changes_now`` and puts a job
    input and a result in the payload store, not awaited."""
    import trio

    from backends.memory import MemoryPayloadStore, MemoryStore
    from benchmarks.floor_core import drive_floor_core

    puts: list[str] = []
    saves: list[str] = []
    save = MemoryStore.save_run_changes_now

    def counting_put(name: str, prefix: str) -> Any:
        put = getattr(MemoryPayloadStore, name)

        def counted(self: Any, key: str, payload: Any) -> None:
            puts.append(prefix)
            put(self, key, payload)
        return counted

    def counting_save(self: Any, run: Any, *args: Any) -> None:
        saves.append(run.id)
        save(self, run, *args)

    async def awaited(*args: Any) -> None:
        raise AssertionError("awaited")

    monkeypatch.setattr(MemoryPayloadStore, "put_context_payload_now",
                        counting_put("put_context_payload_now", "ctx:"))
    monkeypatch.setattr(MemoryPayloadStore, "put_result_payload_now",
                        counting_put("put_result_payload_now", "res:"))
    monkeypatch.setattr(MemoryStore, "save_run_changes_now", counting_save)
    for name in ("put_context_payload", "get_context_payload", "put_result_payload",
                 "get_result_payload", "save_run_changes"):
        cls = MemoryStore if name == "save_run_changes" else MemoryPayloadStore
        monkeypatch.setattr(cls, name, awaited)
    assert trio.run(drive_floor_core, 2)["steps"] == 2 * CHAIN_STEPS
    assert sorted(puts) == ["ctx:"] * 2 * CHAIN_STEPS + ["res:"] * 2 * CHAIN_STEPS
    assert len(saves) == 2 * (CHAIN_STEPS + 1)  # the start, and every result


def test_floor_duties_does_each_steps_duties() -> None:
    """The lean drive really does the work it stands for: every run's steps succeed in
    order, each input and result is in the payload store, each change in the store."""
    import trio

    from benchmarks import floor_duties

    seen: dict[str, Any] = {}
    original = floor_duties._FloorDuties.__init__

    def keep(self: Any, *args: Any) -> None:
        original(self, *args)
        seen["floor"] = self

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(floor_duties._FloorDuties, "__init__", keep)
        trio.run(floor_duties.drive_floor_duties, 4)
    floor = seen["floor"]
    assert len(floor.store.headers) == 4 and not floor.unacked
    for run_id, (status, _) in floor.store.headers.items():
        assert status == "succeeded"
        steps = floor.store.steps[run_id]
        assert [steps[f"s{i}"][0] for i in range(CHAIN_STEPS)] == ["succeeded"] * CHAIN_STEPS
        rows = [row[1] for row in floor.store.timelines[run_id]]
        assert rows.count("step_dispatched") == rows.count("step_completed") == CHAIN_STEPS
        assert rows[0] == "run_status" and rows[-1] == "run_status"
        assert set(floor.store.context[run_id]) == {f"s{i}" for i in range(CHAIN_STEPS)}
        for i in range(CHAIN_STEPS):
            job = f"{run_id}:s{i}@1"
            assert floor.payloads.get(f"redis://res:{job}", 0.0) == {"ok": True}
            assert floor.payloads.get(f"redis://ctx:{job}", 0.0) == {}
