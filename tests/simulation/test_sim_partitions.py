"""Partitions between engines and workers: jobs and results wait for the partition to heal
(nothing the bus guarantees is lost), cancels are lost; whole seeds with partitions end
every run; redeliveries and partitions are counted as situations."""

from __future__ import annotations

import math
import random
from contextlib import AsyncExitStack

import trio

from cordtrio.backends.memory import MemoryBus
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    SUBJECT_WORKFLOW_EVENT,
    BusPacket,
    JobResult,
    JobStatus,
)
from cordtrio.testing import SimulationTotals, open_faulty_bus, simulate
from cordtrio.testing.mix import resolve_mix
from cordtrio.testing.swarm import draw_swarm


def packet(n: int) -> BusPacket:
    return BusPacket("t", "test", None, 1, JobResult(f"run:s@{n}", JobStatus.SUCCEEDED))


async def test_a_partition_holds_jobs_and_results_until_it_heals_and_loses_cancels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = MemoryBus()
    subjects = (SUBJECT_SUBMIT, SUBJECT_RESULT, SUBJECT_CANCEL, SUBJECT_WORKFLOW_EVENT)
    got: dict[str, list[str]] = {s: [] for s in subjects}
    async with (open_faulty_bus(bus, random.Random(1), profile="none") as faulty,
                AsyncExitStack() as stack):
        channels = {s: await stack.enter_async_context(faulty.subscribe(s, max_buffer=math.inf))
                    for s in subjects}
        faulty.cut()
        for n, subject in enumerate(subjects):
            await faulty.publish(subject, packet(n))
        await trio.sleep(30)
        for subject, channel in channels.items():
            while True:
                try:
                    got[subject].append(channel.receive_nowait().payload.job_id)
                except trio.WouldBlock:
                    break
        # only what does not cross between engines and workers got through
        assert got == {SUBJECT_SUBMIT: [], SUBJECT_RESULT: [], SUBJECT_CANCEL: [],
                       SUBJECT_WORKFLOW_EVENT: ["run:s@3"]}
        assert faulty.held_by_partition == 2 and faulty.injected["partition"] == 3
        faulty.heal()
        await trio.sleep(1)
        assert channels[SUBJECT_SUBMIT].receive_nowait().payload.job_id == "run:s@0"
        assert channels[SUBJECT_RESULT].receive_nowait().payload.job_id == "run:s@1"
        assert not faulty.partitioned and faulty.held_by_partition == 0


def test_partitions_are_a_swarm_kind_drawn_on_their_own() -> None:
    shares = [draw_swarm(seed).rates["partition"] for seed in range(200)]
    assert 60 < sum(1 for s in shares if s > 0) < 140 and max(shares) <= 0.2
    # switching partitions off leaves every other kind of the mix as it was
    for seed in range(50):
        with_p, without = draw_swarm(seed), draw_swarm(seed, disabled=("partition",))
        assert {k: v for k, v in with_p.rates.items() if k != "partition"} == {
            k: v for k, v in without.rates.items() if k != "partition"}
    assert resolve_mix(0, "heavy").partition > 0 and resolve_mix(0, "light").partition == 0


def test_seeds_with_partitions_end_every_run_and_count_the_situations() -> None:
    totals = SimulationTotals()
    seeds = [s for s in range(200) if draw_swarm(s).rates["partition"] > 0.1][:12]
    for seed in seeds:
        report = simulate(seed, faults="swarm")
        assert any(" -- partition: engines cut off" in line for line in report.trace), seed
        totals.add(report)
    assert totals.faults["partition"] > 0
    assert totals.situations["partition"] > 0 and totals.situations["redelivery"] > 0
    off = simulate(seeds[0], faults="swarm", disabled=("partition",))
    assert off.faults_injected["partition"] == 0
    assert not any("-- partition" in line for line in off.trace)
