"""The fault mix of one seed: what the bus, the store, the workers and the network do.

``resolve_mix(seed, faults, ...)`` turns a preset name (``none``, ``light``, ``heavy``), a
bus ``FaultProfile`` or ``swarm`` (a mix drawn per seed, ``cordtrio.testing.swarm``) into
one ``FaultMix``: the bus profile, the simulated worker, the store's rates of failed and
ambiguous writes and failed reads, and the share of the horizon during which engines and
workers are partitioned. Any kind in ``FAULT_SWITCHES`` can be switched off (``disabled``),
whatever the preset: the shrinker turns faults off one by one this way, and ``--no-fault``
on the command line replays what it found.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from .faults import FAULT_KINDS, FaultProfile, resolve_profile
from .swarm import SWARM_KINDS, draw_swarm
from .workers import SimulatedWorker

__all__ = ["FAULT_SWITCHES", "PARTITION_SHARES", "FaultMix", "resolve_mix"]

STORE_FAIL_RATES = {"none": 0.0, "light": 0.05, "heavy": 0.2}
STORE_AMBIGUOUS_RATES = {"none": 0.0, "light": 0.02, "heavy": 0.05}
STORE_READ_FAIL_RATES = {"none": 0.0, "light": 0.02, "heavy": 0.05}
PARTITION_SHARES = {"none": 0.0, "light": 0.0, "heavy": 0.05}
"""The share of the horizon during which a preset partitions engines from workers."""

FAULT_SWITCHES = SWARM_KINDS
"""Every fault kind that ``disabled`` (``--no-fault``) can turn off."""

_WORKER_FIELDS = {"worker_fail": "fail_rate", "worker_deny": "deny_rate",
                  "worker_hang": "hang_rate", "worker_crash": "crash_rate"}


@dataclass(frozen=True)
class FaultMix:
    """One seed's faults, resolved (see the module docstring)."""

    profile: FaultProfile
    worker: SimulatedWorker
    store_fail_rate: float
    store_ambiguous_rate: float
    store_read_fail_rate: float
    partition: float = 0.0
    """Share of the horizon (0–1) during which engines and workers are partitioned."""
    swarm: bool = False

    @property
    def enabled(self) -> tuple[str, ...]:
        """The kinds of ``FAULT_SWITCHES`` that are on, in that order."""
        return tuple(k for k in FAULT_SWITCHES if self.rate(k) > 0)

    def rate(self, kind: str) -> float:
        """How much of ``kind`` the mix has (a probability; a share for ``partition``)."""
        if kind in FAULT_KINDS:
            subjects = (self.profile.default, *self.profile.subjects.values())
            return max(float(getattr(s, kind)) for s in subjects)
        if kind in _WORKER_FIELDS:
            return float(getattr(self.worker, _WORKER_FIELDS[kind]))
        return {"store_failure": self.store_fail_rate,
                "store_ambiguous": self.store_ambiguous_rate,
                "store_read_failure": self.store_read_fail_rate,
                "partition": self.partition}[kind]

    def without(self, disabled: Collection[str]) -> FaultMix:
        """The same mix with the kinds in ``disabled`` off."""
        unknown = set(disabled) - set(FAULT_SWITCHES)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; kinds: "
                             f"{', '.join(FAULT_SWITCHES)}")
        bus = {k: 0.0 for k in disabled if k in FAULT_KINDS}
        profile = self.profile
        if bus:
            profile = FaultProfile(replace(profile.default, **bus),
                                   {s: replace(f, **bus) for s, f in profile.subjects.items()},
                                   name=profile.name)
        zero: dict[str, Any] = {_WORKER_FIELDS[k]: 0.0 for k in disabled
                                if k in _WORKER_FIELDS}
        worker = replace(self.worker, **zero)
        off = set(disabled)
        return FaultMix(
            profile, worker,
            0.0 if "store_failure" in off else self.store_fail_rate,
            0.0 if "store_ambiguous" in off else self.store_ambiguous_rate,
            0.0 if "store_read_failure" in off else self.store_read_fail_rate,
            0.0 if "partition" in off else self.partition,
            self.swarm)


def resolve_mix(
    seed: int,
    faults: FaultProfile | str,
    *,
    disabled: Collection[str] = (),
    worker: SimulatedWorker | str | None = None,
    store_fail_rate: float | None = None,
    store_ambiguous_rate: float | None = None,
    store_read_fail_rate: float | None = None,
) -> FaultMix:
    """The ``FaultMix`` of ``seed`` under ``faults`` (see ``simulate`` for the options)."""
    if faults == "swarm":
        drawn = draw_swarm(seed, disabled)
        mix = FaultMix(drawn.profile(), drawn.worker(), drawn.rates["store_failure"],
                       drawn.rates["store_ambiguous"], drawn.rates["store_read_failure"],
                       drawn.rates["partition"], swarm=True)
    else:
        profile = resolve_profile(faults)
        preset = profile.name if profile.name in STORE_FAIL_RATES else "light"
        spec = SimulatedWorker.preset(preset if isinstance(faults, str) or profile.any
                                      else "none")
        mix = FaultMix(profile, spec, STORE_FAIL_RATES.get(preset, 0.0),
                       STORE_AMBIGUOUS_RATES.get(preset, 0.0),
                       STORE_READ_FAIL_RATES.get(preset, 0.0),
                       PARTITION_SHARES.get(profile.name, 0.0))
    if isinstance(worker, str):
        mix = replace(mix, worker=SimulatedWorker.preset(worker))
    elif worker is not None:
        mix = replace(mix, worker=worker)
    if store_fail_rate is not None:
        mix = replace(mix, store_fail_rate=store_fail_rate)
    if store_ambiguous_rate is not None:
        mix = replace(mix, store_ambiguous_rate=store_ambiguous_rate)
    if store_read_fail_rate is not None:
        mix = replace(mix, store_read_fail_rate=store_read_fail_rate)
    return mix.without(disabled) if disabled else mix

