"""Swarm faults: per-seed fault probabilities drawn from the seed.

A preset (``none``, ``light``, ``heavy``) is one point: every seed sees the same small rates
of every fault. ``faults="swarm"`` draws a fresh mix per seed instead (swarm testing, as in
TigerBeetle's VOPR or FoundationDB's simulation): each fault kind of ``SWARM_RANGES`` is
switched on with probability ½, and when on, its probability is drawn uniformly in its
range; one seed in four then picks one of the kinds it switched on and *hammers* it (its
probability goes to the top of its range). So some seeds see no drops at all but many
worker crashes, others lose a third of their cancels and nothing else; the space between
the presets gets covered, and so do the far corners. ``partition`` is not a probability
but the share of the horizon during which engines and workers are cut off from each other
(``FaultyBus.cut``); it is drawn from a stream of its own and never hammered.

``draw_swarm(seed, disabled=...)`` gives the ``Swarm`` of one seed (the same for the same
seed, in any process); kinds in ``disabled`` are forced off (``cordtrio.testing.mix`` does
the same for the presets; the shrinker turns faults off one by one this way).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .faults import FaultProfile, SubjectFaults
from .workers import SimulatedWorker

__all__ = ["SWARM_KINDS", "SWARM_RANGES", "Swarm", "draw_swarm"]

SWARM_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({
    # bus, per packet
    "drop": (0.0, 0.3),
    "duplicate": (0.0, 0.3),
    "reorder": (0.0, 0.3),
    "delay": (0.0, 0.5),
    # store, per call
    "store_failure": (0.0, 0.3),
    "store_ambiguous": (0.0, 0.2),
    "store_read_failure": (0.0, 0.2),
    # workers, per job
    "worker_fail": (0.0, 0.5),
    "worker_deny": (0.0, 0.15),
    "worker_hang": (0.0, 0.1),
    "worker_crash": (0.0, 0.08),
    # the network between engines and workers: the share of the horizon it is cut
    "partition": (0.0, 0.2),
})
"""Each swarm fault kind and the range its probability is drawn from when it is on."""

SWARM_KINDS = tuple(SWARM_RANGES)

_OWN_STREAM = ("partition",)
"""Kinds drawn from a stream of their own, never hammered: adding them left the mixes
of the other kinds as they were."""


@dataclass(frozen=True)
class Swarm:
    """One seed's fault mix: ``rates`` (kind → probability, 0 when off), the longest bus
    delay and worker latency, and whether a kind is hammered (``hammered``, or "")."""

    rates: Mapping[str, float]
    max_delay: float
    max_latency: float
    hammered: str = ""
    disabled: frozenset[str] = field(default_factory=frozenset)

    @property
    def enabled(self) -> tuple[str, ...]:
        """The kinds switched on, in ``SWARM_KINDS`` order."""
        return tuple(k for k in SWARM_KINDS if self.rates.get(k, 0.0) > 0)

    def profile(self) -> FaultProfile:
        r = self.rates
        return FaultProfile(SubjectFaults(drop=r["drop"], duplicate=r["duplicate"],
                                          reorder=r["reorder"], delay=r["delay"],
                                          max_delay=self.max_delay), name="swarm")

    def worker(self) -> SimulatedWorker:
        r = self.rates
        return SimulatedWorker(latency=(0.01, self.max_latency), fail_rate=r["worker_fail"],
                               deny_rate=r["worker_deny"], hang_rate=r["worker_hang"],
                               crash_rate=r["worker_crash"])

    def __str__(self) -> str:
        on = ", ".join(f"{k} {self.rates[k]:.0%}" + (" (hammered)" if k == self.hammered
                                                     else "")
                       for k in self.enabled)
        return f"swarm [{on or 'no faults'}]"


def draw_swarm(seed: int, disabled: Collection[str] = ()) -> Swarm:
    """The fault mix of ``seed`` (see the module docstring). ``disabled`` kinds are off;
    the others are drawn exactly as without it, so turning one kind off leaves the rest of
    the mix as it was."""
    unknown = set(disabled) - set(SWARM_KINDS)
    if unknown:
        raise ValueError(f"unknown swarm fault kind(s) {sorted(unknown)}; kinds: "
                         f"{', '.join(SWARM_KINDS)}")
    rng = random.Random(f"cordtrio-sim:{seed}:swarm")
    rates: dict[str, float] = {}
    for kind, (lo, hi) in SWARM_RANGES.items():
        if kind in _OWN_STREAM:
            continue
        on = rng.random() < 0.5
        value = rng.uniform(lo, hi)
        rates[kind] = value if on else 0.0
    max_delay = rng.uniform(0.5, 15.0)
    max_latency = rng.uniform(1.0, 10.0)
    hammered = ""
    if rng.random() < 0.25:
        switched_on = [k for k in SWARM_KINDS if rates.get(k, 0.0) > 0]
        if switched_on:
            hammered = rng.choice(switched_on)
            rates[hammered] = SWARM_RANGES[hammered][1]
    for kind in _OWN_STREAM:
        own = random.Random(f"cordtrio-sim:{seed}:swarm:{kind}")
        on = own.random() < 0.5
        rates[kind] = own.uniform(*SWARM_RANGES[kind]) if on else 0.0
    for kind in disabled:
        rates[kind] = 0.0
    if hammered in disabled:
        hammered = ""
    return Swarm(MappingProxyType(rates), max_delay, max_latency, hammered,
                 frozenset(disabled))
