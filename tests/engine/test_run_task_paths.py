"""A run task applies a batch of one job result from the bus on a short path
(``RunTask._apply_result``: on the in-memory backends, its effects carried out in one
frame) and any other batch on the general one (``RunTask._process``). The two must do the
same: here the same runs are driven both ways, with a real worker, and everything the
engine leaves behind is compared (the runs, their timelines, each run's hooks and the
jobs sent and run, in order).

The short path stops and goes on the general way for what it does not carry out itself
(a retry's timer, a job refused bare, a hand-over that fails, feedback through the core):
the cases below reach each of those."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from test_engine_kit import T0, WF, step, tapping, workflow

from cordtrio.backends.memory import MemoryBus, MemoryPayloadStore, MemoryStore
from cordtrio.engine import TrioWallClock, open_engine
from cordtrio.engine.run_task import RunTask
from cordtrio.model import RetryConfig, Step, StepType
from cordtrio.protocol import SUBJECT_SUBMIT
from cordtrio.worker import Job, open_worker


async def _handler(job: Job) -> dict[str, Any]:
    target, _, attempt = job.job_id.rpartition(":")[2].partition("@")
    if target.startswith("flaky") and attempt == "1":
        raise RuntimeError("first attempt fails")
    if target.startswith("bad"):
        raise RuntimeError("always fails")
    return {"step": target, "input": sorted(job.input)}


def _chain() -> list[Step]:
    return [step("a"), step("b", depends_on=["a"]), step("c", depends_on=["b"])]


def _fan() -> list[Step]:
    return [step("a"), step("b", depends_on=["a"]), step("c", depends_on=["a"]),
            step("d", depends_on=["b", "c"])]


def _retried() -> list[Step]:
    retry = RetryConfig(max_retries=2, initial_backoff_sec=5, multiplier=2)
    return [step("a"), step("flaky", depends_on=["a"], retry=retry),
            step("z", depends_on=["flaky"])]


def _mixed() -> list[Step]:
    """A result whose effects the short path stops in the middle of: a job, a delay's
    timer, a job, a notification (its alert's outcome fed back through the core)."""
    return [step("a"), step("b", depends_on=["a"]),
            step("d", type=StepType.DELAY, delay_sec=5, depends_on=["a"]),
            step("c", depends_on=["a"]),
            step("n", type=StepType.NOTIFY, input={"message": "hi"}, depends_on=["a"]),
            step("e", depends_on=["b", "d", "c", "n"])]


def _failing() -> list[Step]:
    return [step("a"), step("bad", depends_on=["a"]), step("z", depends_on=["bad"])]


async def _drive(steps: list[Step], runs: int = 3, *, tap: bool = False, refuse: int = -1,
                 fail_write: int = -1, hooks_fail: bool = False, committing: bool = False
                 ) -> dict[str, Any]:
    """Drive ``runs`` runs of ``steps`` to their end with a worker; what the engine left
    behind, with run ids replaced by their order of submission. ``tap``: another
    subscriber of job requests (the bus then refuses them bare); ``refuse``: the bus's
    bare hand-over raises on that call (counted from 0); ``fail_write``: the store's write
    not awaited fails on that call; ``hooks_fail``: the hooks raise for step ``b``;
    ``committing``: the engine wired as on Redis with the nng router in its process (job
    inputs staged for the run write, which is awaited, job requests published in packets
    at once)."""
    payloads = MemoryPayloadStore()
    store = _CommittingStore(payloads) if committing else MemoryStore() if fail_write < 0 \
        else _FailingStore(fail_write)
    bus = (_PacketBus(refuse) if committing else _RecordingBus() if refuse < 0
           else _BreakingBus(refuse))
    await store.save_workflow(workflow(*steps))
    hooks: list[tuple[str, ...]] = []
    ran: list[str] = []  # the jobs the worker ran, in order

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.job_id)
        return await _handler(job)

    def hook(*call: Any) -> None:
        hooks.append(call)
        if hooks_fail and call[2] == "b":
            raise RuntimeError("hook broke")

    async with (
        open_engine(store, bus, payloads=payloads, clock=TrioWallClock(T0),
                    on_step_dispatched=lambda r, s, j: hook("dispatched", r, s, j),
                    on_step_finished=lambda r, s, st: hook("finished", r, s, st),
                    ) as engine,
        tapping(bus, SUBJECT_SUBMIT) if tap else _nothing(),
        open_worker(bus, payloads, {"job.test": handler}, worker_id="w1"),
    ):
        ids = [await engine.submit(WF, {"n": i}) for i in range(runs)]
        with trio.fail_after(3600):
            finals = [await engine.wait_run(run_id) for run_id in ids]
        timelines = [await store.list_timeline_events(run_id, limit=1000) for run_id in ids]

    def plain(value: Any) -> Any:
        text = repr(value)
        for i, run_id in enumerate(ids):
            text = text.replace(run_id, f"run{i}")
        return text

    return {
        # (the context's steps in any order: the worker may answer parallel steps in
        # either order)
        "runs": [plain((r.status, r.output, r.error, json.dumps(r.context, sort_keys=True),
                        sorted(
            (sid, sr.status, sr.attempts, sr.output, sr.error, sr.job_id,
             sr.started_at, sr.completed_at, sr.next_attempt_at)
            for sid, sr in r.steps.items()), r.started_at, r.completed_at))
            for r in finals],
        # one run's rows in order, per step (the worker may answer parallel steps in
        # either order)
        "timelines": [plain(sorted(((e.step_id, e.type, e.job_id, e.status, e.message,
                                     e.data) for e in events), key=lambda row: row[0]))
                      for events in timelines],
        # each run's dispatches in their order (its parallel steps are dispatched in
        # definition order); what finished and what the worker ran in any order (it may
        # run parallel steps in either order), each once
        "dispatched": [plain([h for h in hooks if h[1] == run_id and h[0] == "dispatched"])
                       for run_id in ids],
        "finished": [plain(sorted(h for h in hooks if h[1] == run_id and h[0] == "finished"))
                     for run_id in ids],
        "ran": [plain(sorted(job for job in ran if job.startswith(f"{run_id}:")))
                for run_id in ids],
        "sent": [plain([job for job in bus.sent if job.startswith(f"{run_id}:")])
                 for run_id in ids],
    }


class _FailingStore(MemoryStore):
    """Its write not awaited fails once, on call ``fail`` (from 0); still offered to the
    engine (``writes_now``), which then writes again the awaited way."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def save_run_changes_now(self, *args: Any) -> None:
        self.fail -= 1
        if self.fail == -1:
            raise RuntimeError("store hiccup")
        super().save_run_changes_now(*args)


_FailingStore.writes_now = True  # (turned off for a subclass that overrides the write)


class _RecordingBus(MemoryBus):
    """Keeps the ids of the job requests it took bare, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def submit_now(self, request: Any, *args: Any) -> bool:
        taken = super().submit_now(request, *args)
        if taken:
            self.sent.append(request.job_id)
        return taken


class _BreakingBus(_RecordingBus):
    """Its bare hand-over of a job request fails once, on call ``refuse`` (from 0)."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse = refuse

    def submit_now(self, *args: Any) -> bool:
        self.refuse -= 1
        if self.refuse == -1:
            raise RuntimeError("bus broke")
        return super().submit_now(*args)


class _CommittingStore(MemoryStore):
    """Writes the job inputs staged in a run's changes with them (``ports.PayloadCommit``,
    as the Redis store does), awaited (as on Redis: no write not awaited)."""

    def __init__(self, payloads: MemoryPayloadStore) -> None:
        super().__init__()
        self.payloads = payloads

    def commits_payloads_of(self, payloads: object) -> bool:
        return payloads is self.payloads

    async def save_run_changes(self, run: Any, changes: Any, timeline: Any = ()) -> None:
        for key, data in changes.payloads.items():
            await self.payloads.put_context(key, data)
        await super().save_run_changes(run, changes, timeline)


class _PacketBus(MemoryBus):
    """Takes job requests in packets only, at once when it can (``publish_now``, as the
    nng router in the engine's process; no bare hand-over); its hand-over raises on call
    ``refuse`` (from 0). Keeps the ids of the job requests it took at once, in order."""

    submit_now = None  # type: ignore[assignment]

    def __init__(self, refuse: int = -1) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.refuse = refuse

    def publish_now(self, subject: str, packet: Any) -> bool:
        if subject == SUBJECT_SUBMIT:
            self.refuse -= 1
            if self.refuse == -1:
                raise RuntimeError("bus broke")
        taken = super().publish_now(subject, packet)
        if taken and subject == SUBJECT_SUBMIT:
            self.sent.append(packet.payload.job_id)
        return taken


_PacketBus.publishes_now = True  # (turned off for a subclass that overrides ``publish_now``)


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _general_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch the general way: a lone result too."""

    async def general(self: RunTask, item: Any, tx: Any) -> None:
        await self._process([item], self.plan, self.state, tx)  # type: ignore[arg-type]

    monkeypatch.setattr(RunTask, "_apply_result", general)


def _counting_short(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the batches the short path applies (it must be taken, for the test to mean
    anything)."""
    taken = [0, 0]  # the batches on the short path; the general way's passes
    real = RunTask._apply_result
    carry_out = RunTask._carry_out

    async def counted(self: RunTask, item: Any, tx: Any) -> None:
        assert self._wiring.quick  # no configuration to look up: the whole short path
        taken[0] += 1
        await real(self, item, tx)

    async def general(self: RunTask, *args: Any) -> None:
        taken[1] += 1
        await carry_out(self, *args)

    monkeypatch.setattr(RunTask, "_apply_result", counted)
    monkeypatch.setattr(RunTask, "_carry_out", general)
    return taken


@pytest.mark.parametrize(("steps", "options"), [
    (_chain, {}),
    (_fan, {}),
    (_retried, {}),  # a retry's timer: the short path stops at ``ArmTimer``
    (_failing, {}),
    (_mixed, {}),  # the short path stops part-way: after a job, at a delay's timer
    (_mixed, {"tap": True}),
    (_chain, {"tap": True}),  # every job refused bare: ``_after_write`` sends packets
    # (one run where a failure is counted: which run's call it hits depends on how the
    # runs' tasks take turns, which the two ways may change)
    (_chain, {"refuse": 1, "runs": 1}),  # a hand-over fails: fed back through the core
    (_fan, {"refuse": 2, "runs": 1}),
    (_chain, {"fail_write": 2, "runs": 1}),  # a write fails once: written again, awaited
    (_chain, {"hooks_fail": True}),  # hooks that raise: logged, nothing else changes
    (_fan, {"hooks_fail": True}),
    # wired as on Redis with the nng router: staged inputs, awaited writes, packets
    (_chain, {"committing": True}),
    (_fan, {"committing": True}),
    (_retried, {"committing": True}),
    (_failing, {"committing": True}),
    (_mixed, {"committing": True}),
    (_chain, {"committing": True, "tap": True}),  # every job refused at once: awaited
    (_chain, {"committing": True, "refuse": 1, "runs": 1}),
    (_fan, {"committing": True, "refuse": 2, "runs": 1}),
    (_fan, {"committing": True, "hooks_fail": True}),
])
async def test_the_short_path_does_what_the_general_one_does(
        steps: Any, options: dict[str, Any], autojump_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched:
        taken = _counting_short(patched)
        short = await _drive(steps(), **options)
    assert taken[0] >= options.get("runs", 3)  # (results may come together: one batch)
    if steps is _chain and not options.get("tap") and options.get("refuse", -1) < 0:
        # a chain's results all the short way: the general one carries out only the
        # first steps' (a run's start)
        assert taken[1] < taken[0]
    with monkeypatch.context() as patched:
        _general_only(patched)
        general = await _drive(steps(), **options)
    assert short == general
