"""Engine crashes placed in virtual time: every seed crashes (by default one to three
times), some while a retry or delay timer is pending, some as a crashed engine reopens;
with several engines, some crashed engines' runs are taken over before they come back."""

from __future__ import annotations

import itertools
import re

from cordtrio.cli import main
from cordtrio.testing import SimulationTotals, simulate

CRASH = re.compile(r"^(\d+\.\d+) !! engine crash")


def crash_times(trace: list[str]) -> list[float]:
    return [float(m.group(1)) for line in trace if (m := CRASH.match(line))]


def test_every_seed_crashes_by_default_and_none_when_told() -> None:
    counts = set()
    for seed in range(30):
        report = simulate(seed, faults="swarm")
        times = crash_times(report.trace)
        assert 1 <= len(times) <= 3, seed
        assert report.engine_restarts == len(times) == report.faults_injected["engine_crash"]
        assert all(t < 0.85 * 300 + 5 for t in times)  # during the horizon
        counts.add(len(times))
    assert counts == {1, 2, 3}  # the number of crashes comes from the seed
    for seed in range(5):
        assert not crash_times(simulate(seed, crash=False).trace)
        assert not crash_times(simulate(seed, crash=0).trace)
        assert len(crash_times(simulate(seed, crash=4).trace)) == 4


def test_crashes_hit_pending_timers_and_reopening_engines() -> None:
    totals = SimulationTotals()
    timer_crash = reopen_crash = 0
    for seed in range(60):
        report = simulate(seed, faults="swarm", crash=3)
        totals.add(report)
        events = [line.split(" ", 1)[1] for line in report.trace]
        timer_crash += sum(e.endswith("(with a pending timer)") for e in events)
        # a crash "right after a restart" often lands before the recovery is done
        reopen_crash += sum(a.startswith("engine restart") and b.startswith("!! engine crash")
                            for a, b in itertools.pairwise(events))
    assert totals.situations["crash with a pending timer"] == timer_crash > 5
    assert totals.situations["crash right after a restart"] > 5
    assert reopen_crash > 3


def test_a_second_engine_takes_over_before_the_crashed_one_restarts() -> None:
    takeovers = 0
    for seed in range(40):
        report = simulate(seed, engines=2, faults="swarm")
        n = report.situations.get("takeover before restart", 0)
        if not n:
            continue
        takeovers += n
        # in the trace: e0 (say) crashed, e1 took a run's lease, and only then e0 came back
        down: dict[str, int] = {}
        seen = False
        for i, line in enumerate(report.trace):
            if m := re.search(r"!! engine crash (e\d)", line):
                down[m.group(1)] = i
            elif m := re.search(r"engine restart \(recovering\) (e\d)", line):
                down.pop(m.group(1), None)
            elif (m := re.search(r"lease \S+ taken by sim-(e\d)-", line)) and any(
                    name != m.group(1) for name in down):
                seen = True
        assert seen, seed
    assert takeovers > 3


def test_the_command_line_crash_count() -> None:
    assert main(["simulate", "--seeds", "2", "--crashes", "0", "--quiet"]) == 0
    assert main(["simulate", "--seeds", "2", "--crashes", "2", "--quiet"]) == 0
