"""The floor under W1 (``python -m benchmarks.floor``): the floor program and its variants
(pool grown, duties, cordtrio's parts), --compare, --parts and --ratios, each driven at a
tiny size; figures asserted by their shape and arithmetic, never their values."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from benchmarks.workloads import CHAIN_STEPS

ROOT = Path(__file__).resolve().parent.parent


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
