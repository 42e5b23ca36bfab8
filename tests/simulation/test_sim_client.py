"""Workloads through ``Client`` as well as the engines: runs submitted, approved, cancelled
and rerun through the store-only Client (queued commands that an engine applies), with the
cancels and reruns told to the oracle and the invariants."""

from __future__ import annotations

import re

from cordtrio.testing import SimulationTotals, simulate


def test_client_and_engine_workloads_with_cancels_and_reruns() -> None:
    totals = SimulationTotals()
    lines: list[str] = []
    reruns = 0
    for seed in range(40):
        report = simulate(seed, faults="swarm", engines=1 + seed % 2)
        totals.add(report)
        reruns += report.reruns
        lines += [line.split(" ", 1)[1] for line in report.trace]
    def count(pattern: str) -> int:
        return sum(bool(re.match(pattern, line)) for line in lines)

    assert count(r"submit sim-\d+-\d+ accepted run-\S+ \(client\)$") > 20
    assert count(r"submit sim-\d+-\d+ accepted run-\S+$") > 20  # through an engine
    assert count(r"(approve|reject) \S+ \(client\)$") > 0
    assert count(r"cancel \S+ \(client\)$") > 0 and count(r"cancel \S+$") > 0
    assert count(r"rerun \S+ from \S+( \S+)? accepted \S+ \(client\)$") > 0
    assert count(r"rerun \S+ from \S+( \S+)? accepted \S+$") > 0  # engine: create + start
    assert totals.situations["rerun"] == reruns > 0
    assert totals.situations["run cancelled"] > 0 and totals.statuses["cancelled"] > 0


def test_no_operator_without_faults() -> None:
    report = simulate(2, faults="none", crash=False)
    assert report.reruns == 0 and "cancelled" not in report.statuses
    assert not any(" cancel " in line or " rerun " in line for line in report.trace)
