"""Swarm faults: each seed draws its own fault mix (kinds on or off, rates in a range)."""

from __future__ import annotations

import pytest

from cordtrio.testing import simulate
from cordtrio.testing.swarm import SWARM_KINDS, SWARM_RANGES, draw_swarm

BUS = ("drop", "duplicate", "reorder", "delay")


def test_the_mix_comes_from_the_seed_and_varies() -> None:
    swarms = [draw_swarm(seed) for seed in range(200)]
    assert swarms[7] == draw_swarm(7)
    for kind in SWARM_KINDS:
        lo, hi = SWARM_RANGES[kind]
        rates = [s.rates[kind] for s in swarms]
        off = sum(rate == 0 for rate in rates)
        assert 40 < off < 160, kind  # switched off in some seeds, on in others
        assert all(rate == 0 or lo <= rate <= hi for rate in rates), kind
        assert len({r for r in rates if r}) > 20, kind  # drawn, not fixed
    hammered = [s for s in swarms if s.hammered]
    assert 20 < len(hammered) < 90
    for s in hammered:
        assert s.rates[s.hammered] == SWARM_RANGES[s.hammered][1]


def test_disabled_kinds_are_off_and_the_rest_unchanged() -> None:
    for seed in range(50):
        full = draw_swarm(seed)
        less = draw_swarm(seed, disabled=("drop", "worker_crash"))
        assert less.rates["drop"] == less.rates["worker_crash"] == 0
        for kind in SWARM_KINDS:
            if kind not in ("drop", "worker_crash"):
                assert less.rates[kind] == full.rates[kind]
    with pytest.raises(ValueError, match="unknown swarm fault kind"):
        draw_swarm(0, disabled=("earthquake",))


def test_a_swarm_seed_injects_exactly_the_kinds_it_switched_on() -> None:
    seen_off = 0
    for seed in range(12):
        swarm = draw_swarm(seed)
        report = simulate(seed, faults="swarm", crash=False)
        for kind in BUS:
            if swarm.rates[kind] == 0:
                seen_off += 1
                assert report.faults_injected[kind] == 0, (seed, kind)
        if swarm.rates["store_failure"] == 0:
            assert report.faults_injected.get("store_failure", 0) == 0
        for kind in ("fail", "deny", "hang", "crash"):
            if kind == "crash" and swarm.rates["worker_hang"]:
                continue  # a hung job without a deadline is a lost (crashed) worker
            if swarm.rates[f"worker_{kind}"] == 0:
                assert report.faults_injected.get(f"worker_{kind}", 0) == 0, (seed, kind)
    assert seen_off > 0


def test_swarm_is_deterministic_and_disabled_works_under_presets_too() -> None:
    a = simulate(3, faults="swarm", disabled=("delay",))
    b = simulate(3, faults="swarm", disabled=("delay",))
    assert a.trace_hash == b.trace_hash and a.faults_injected["delay"] == 0
    heavy = simulate(3, faults="heavy", disabled=("delay", "worker_fail", "store_failure"))
    for kind in ("delay", "worker_fail", "store_failure"):
        assert heavy.faults_injected.get(kind, 0) == 0, kind
    assert heavy.faults_injected["duplicate"] > 0
    with pytest.raises(ValueError, match="unknown fault kind"):
        simulate(3, faults="light", disabled=("earthquake",))
