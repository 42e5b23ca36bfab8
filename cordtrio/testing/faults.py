"""A fault-injecting bus: drop, duplicate, reorder and delay packets, seeded.

``FaultyBus`` wraps any ``Bus``. Every ``publish`` draws from one ``random.Random`` and, with
the probabilities of the subject's ``SubjectFaults``:

* **drop** — the packet is silently lost (``publish`` still returns normally);
* **duplicate** — the packet is delivered twice;
* **delay** — the packet is delivered later, after ``uniform(0, max_delay)`` seconds of Trio
  time (from the bus' own nursery, so ``publish`` does not wait);
* **reorder** — the packet is held back and released right *after* the next packet on the
  same subject (or after ``max_delay`` seconds if no other packet comes).

Over a bus with job queues (``ports.JobBus``: ``MemoryBus``, nng) ``open_faulty_bus`` gives a
``FaultyJobBus``, which models what such a bus really does (SPEC §13): job requests and
results are never dropped (a real client re-sends a publish until the router confirms it),
but they are duplicated, delayed and reordered; workers take jobs through the inner bus's
job queues, so a worker that crashes hands its jobs to the others. Every other subject
(cancels, alerts, start reports) can still be dropped.

A **partition** cuts the network between the engines and the workers for a while
(``bus.cut()`` … ``bus.heal()``): job requests and results published meanwhile are held
and delivered when it heals (a client re-sends a publish until the router has it, so
neither is lost), in an order drawn from the seed; cancels are lost (a worker's plain
subscription misses what is published while its connection is down). Each packet held or
lost is counted as a ``partition`` fault.

Delays need a nursery, so open the bus with ``async with open_faulty_bus(inner, rng) as bus``.
``bus.stop()`` ends the injection (held packets are released at once, a partition
heals); ``bus.injected`` counts what was injected.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import trio

from ..ports import Bus, JobBus, JobInbox
from ..protocol import SUBJECT_CANCEL, SUBJECT_RESULT, SUBJECT_SUBMIT, BusPacket

__all__ = [
    "FAULT_KINDS",
    "FaultProfile",
    "FaultyBus",
    "FaultyJobBus",
    "SubjectFaults",
    "open_faulty_bus",
    "resolve_profile",
]

FAULT_KINDS = ("drop", "duplicate", "reorder", "delay")

_PARTITIONED = frozenset({SUBJECT_SUBMIT, SUBJECT_RESULT, SUBJECT_CANCEL})
"""What crosses between engines and workers: what a partition holds (or loses)."""

FaultListener = Callable[[str, str, BusPacket], None]
"""Called as ``(kind, subject, packet)`` for every injected fault."""

PublishListener = Callable[[str, BusPacket], None]
"""Called as ``(subject, packet)`` for every packet published, before any fault."""


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class SubjectFaults:
    """Fault probabilities (each in [0, 1]) for one subject, and the longest delay (s)."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    max_delay: float = 0.0

    def __post_init__(self) -> None:
        for name in FAULT_KINDS:
            _probability(name, getattr(self, name))
        if self.max_delay < 0:
            raise ValueError(f"max_delay must be >= 0, got {self.max_delay!r}")

    @property
    def any(self) -> bool:
        return bool(self.drop or self.duplicate or self.reorder or self.delay)


_NO_FAULTS = SubjectFaults()


@dataclass(frozen=True)
class FaultProfile:
    """Per-subject fault settings: ``subjects[subject]`` if present, else ``default``."""

    default: SubjectFaults = _NO_FAULTS
    subjects: Mapping[str, SubjectFaults] = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", MappingProxyType(dict(self.subjects)))

    def for_subject(self, subject: str) -> SubjectFaults:
        return self.subjects.get(subject, self.default)

    @property
    def any(self) -> bool:
        return self.default.any or any(f.any for f in self.subjects.values())

    @classmethod
    def none(cls) -> FaultProfile:
        """No bus faults at all."""
        return cls(name="none")

    @classmethod
    def light(cls) -> FaultProfile:
        """A few percent of packets dropped, duplicated, reordered or delayed (≤ 2 s)."""
        return cls(SubjectFaults(drop=0.02, duplicate=0.03, reorder=0.03, delay=0.05,
                                 max_delay=2.0), name="light")

    @classmethod
    def heavy(cls) -> FaultProfile:
        """A hostile network: 10 % drops, many duplicates, reorders and delays (≤ 10 s)."""
        return cls(SubjectFaults(drop=0.10, duplicate=0.10, reorder=0.10, delay=0.20,
                                 max_delay=10.0), name="heavy")


PRESETS: Mapping[str, Callable[[], FaultProfile]] = MappingProxyType({
    "none": FaultProfile.none,
    "light": FaultProfile.light,
    "heavy": FaultProfile.heavy,
})


def resolve_profile(profile: FaultProfile | str | None) -> FaultProfile:
    """A profile, or a preset by name (``none``, ``light``, ``heavy``); None means none."""
    if profile is None:
        return FaultProfile.none()
    if isinstance(profile, FaultProfile):
        return profile
    try:
        return PRESETS[profile]()
    except KeyError:
        raise ValueError(f"unknown fault profile {profile!r}; presets: {sorted(PRESETS)}"
                         ) from None


class FaultyBus:
    """A ``Bus`` that injects faults into what is published (see the module docstring).

    Subscriptions go straight to the inner bus. Create it with ``open_faulty_bus``; a
    ``FaultyBus`` built directly needs ``attach(nursery)`` before delays can be injected.
    """

    def __init__(
        self,
        inner: Bus,
        rng: random.Random,
        *,
        profile: FaultProfile | str | None = "light",
        on_fault: FaultListener | None = None,
        on_publish: PublishListener | None = None,
    ) -> None:
        self.inner = inner
        self._on_publish = on_publish
        self.profile = resolve_profile(profile)
        self.injected: Counter[str] = Counter()
        self.active = True
        self._rng = rng
        self._on_fault = on_fault
        self._nursery: trio.Nursery | None = None
        self._held: dict[str, tuple[int, BusPacket]] = {}  # subject -> (token, packet)
        self._token = 0
        self.partitioned = False
        self._cut: list[tuple[str, BusPacket]] = []  # held by the partition, in order

    def attach(self, nursery: trio.Nursery) -> None:
        """The nursery delayed and held packets are released from."""
        self._nursery = nursery

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def stop(self) -> None:
        """Stop injecting faults; release every held packet now (delayed ones still
        arrive when their delay is over)."""
        self.active = False
        self.heal()
        for subject in list(self._held):
            _, packet = self._held.pop(subject)
            self._spawn(self._later, 0.0, subject, packet)

    def cut(self) -> None:
        """Partition engines from workers until ``heal`` (see the module docstring)."""
        self.partitioned = True

    @property
    def held_by_partition(self) -> int:
        """Jobs and results the partition holds now."""
        return len(self._cut)

    def heal(self) -> None:
        """End the partition: deliver the jobs and results it held."""
        self.partitioned = False
        held, self._cut = self._cut, []
        for subject, packet in held:
            self._spawn(self._later, 0.0, subject, packet)

    def _can_drop(self, subject: str) -> bool:
        return True

    async def publish(self, subject: str, packet: BusPacket) -> None:
        if self._on_publish is not None:
            self._on_publish(subject, packet)
        if self.partitioned and subject in _PARTITIONED and self._nursery is not None:
            self._note("partition", subject, packet)
            if subject != SUBJECT_CANCEL:
                self._cut.append((subject, packet))
            await trio.lowlevel.checkpoint()
            return
        faults = self.profile.for_subject(subject)
        if not self.active or not faults.any or self._nursery is None:
            await self.inner.publish(subject, packet)
            return
        rng = self._rng
        if rng.random() < faults.drop and self._can_drop(subject):
            self._note("drop", subject, packet)
            await trio.lowlevel.checkpoint()
            return
        copies = 1
        sent = False
        if rng.random() < faults.duplicate:
            self._note("duplicate", subject, packet)
            copies = 2
        for _ in range(copies):
            if rng.random() < faults.delay:
                self._note("delay", subject, packet)
                self._spawn(self._later, rng.uniform(0.0, faults.max_delay), subject, packet)
            elif subject not in self._held and rng.random() < faults.reorder:
                self._note("reorder", subject, packet)
                self._token += 1
                self._held[subject] = (self._token, packet)
                self._spawn(self._release_late, max(faults.max_delay, 1.0), subject,
                            self._token)
            else:
                sent = True
                await self.inner.publish(subject, packet)
                held = self._held.pop(subject, None)
                if held is not None:  # the held packet goes out right after this one
                    await self.inner.publish(subject, held[1])
        if not sent:
            await trio.lowlevel.checkpoint()

    def subscribe(self, subject: str, queue: str = "", *, max_buffer: int = 1024
                  ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[BusPacket]]:
        return self.inner.subscribe(subject, queue, max_buffer=max_buffer)

    # ----------------------------------------------------------------------- internals

    def _note(self, kind: str, subject: str, packet: BusPacket) -> None:
        self.injected[kind] += 1
        if self._on_fault is not None:
            self._on_fault(kind, subject, packet)

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    async def _later(self, delay: float, subject: str, packet: BusPacket) -> None:
        await trio.sleep(delay)
        await self.inner.publish(subject, packet)

    async def _release_late(self, after: float, subject: str, token: int) -> None:
        await trio.sleep(after)
        held = self._held.get(subject)
        if held is not None and held[0] == token:
            del self._held[subject]
            await self.inner.publish(subject, held[1])


class FaultyJobBus(FaultyBus):
    """A ``FaultyBus`` over a ``JobBus``: jobs and results are never dropped (see the
    module docstring), and ``consume_jobs`` goes straight to the inner bus."""

    _NEVER_DROPPED = frozenset({SUBJECT_SUBMIT, SUBJECT_RESULT})

    def _can_drop(self, subject: str) -> bool:
        return subject not in self._NEVER_DROPPED

    def consume_jobs(self, topics: Collection[str], *, capacity: int
                     ) -> AbstractAsyncContextManager[JobInbox]:
        inner = self.inner
        assert isinstance(inner, JobBus)
        return inner.consume_jobs(topics, capacity=capacity)


@asynccontextmanager
async def open_faulty_bus(
    inner: Bus,
    rng: random.Random,
    *,
    profile: FaultProfile | str | None = "light",
    on_fault: FaultListener | None = None,
    on_publish: PublishListener | None = None,
) -> AsyncIterator[FaultyBus]:
    """A ``FaultyBus`` over ``inner`` for the duration of the block. Leaving the block
    drops packets still delayed or held. ``on_publish`` sees every packet published,
    before any fault."""
    kind = FaultyJobBus if isinstance(inner, JobBus) else FaultyBus
    bus = kind(inner, rng, profile=profile, on_fault=on_fault, on_publish=on_publish)
    async with trio.open_nursery() as nursery:
        bus.attach(nursery)
        try:
            yield bus
        finally:
            bus.active = False
            nursery.cancel_scope.cancel()
