"""Handing commands to the engine that owns their run (``cordtrio.engine.forwarding``)."""

from __future__ import annotations

import trio
from test_engine_kit import create_pending_run, step, workflow

from cordtrio.backends.memory import MemoryStore
from cordtrio.core.events import CancelRun
from cordtrio.engine.envelopes import Envelope, Redirect, Reply
from cordtrio.engine.forwarding import forward_as_guest


class StuckInboxes:
    """The store does not answer: a hand-over never completes."""

    async def forward(self, run_id: str, data: bytes) -> None:
        await trio.sleep_forever()


class Inboxes:
    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes]] = []

    async def forward(self, run_id: str, data: bytes) -> None:
        self.queued.append((run_id, data))


async def test_a_hand_over_cut_short_is_not_reported_as_queued(autojump_clock) -> None:
    store = MemoryStore()
    await store.save_workflow(workflow(step("a")))
    await create_pending_run(store, "r1")
    first, second = (Envelope(CancelRun(), done=Reply()) for _ in range(2))
    with trio.move_on_after(5):  # the run task's cleanup time
        await forward_as_guest(StuckInboxes(), store, "r1", [first, second])
    for envelope in (first, second):
        assert envelope.done is not None and envelope.done.is_set()
        assert isinstance(envelope.error, Redirect)  # the caller delivers it again


async def test_a_queued_command_is_answered_without_error() -> None:
    store = MemoryStore()
    await store.save_workflow(workflow(step("a")))
    await create_pending_run(store, "r1")
    inboxes, envelope = Inboxes(), Envelope(CancelRun(), done=Reply())
    await forward_as_guest(inboxes, store, "r1", [envelope])
    assert envelope.error is None and envelope.done is not None and envelope.done.is_set()
    assert [run_id for run_id, _ in inboxes.queued] == ["r1"]
