"""Handing a run's envelopes to the engine that owns it (multi-engine mode).

A run task that could not take its run's lease, or that is letting its run go (lease lost,
engine closing), passes what it holds to the run's inbox in the store; the owner applies it.
API calls are checked against the stored run first, so ``approve_step`` on an unknown run or
a step that is not waiting fails at once with the usual typed error, as on the owner; the
command itself is then applied asynchronously by the owner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ..core.events import Approve, CancelRun, ResultReceived, Start
from ..errors import CordtrioError
from ..ports import Store
from ..retry import retrying
from ..wire_commands import encode_command, is_wire_command
from .envelopes import Envelope, Redirect
from .submission import check_approvable

log = logging.getLogger("cordtrio.engine")


class Inboxes(Protocol):
    """Where commands for a run owned by another engine go (``LeaseKeeper``)."""

    async def forward(self, run_id: str, data: bytes) -> None:
        """Queue an encoded command in the run's inbox (waking the owner)."""


async def forward_as_guest(keeper: Inboxes, store: Store, run_id: str,
                           envelopes: Sequence[Envelope]) -> None:
    """This engine does not own the run: check and queue each command for the owner, then
    answer its caller. Drain requests are dropped (the owner was woken when the commands
    were queued, or drains its inbox when it takes the run). A command whose hand-over was
    cut short (the task's cleanup time ran out, the store not answering) is answered with
    ``Redirect``, not as queued: its caller delivers it again."""
    try:
        for envelope in envelopes:
            if envelope.drain or not is_wire_command(envelope.event):
                _answer(envelope)
                continue
            try:
                if envelope.done is not None:
                    await _check(store, run_id, envelope)
                if isinstance(envelope.event, ResultReceived):
                    # the owner reloads the payload itself: a loaded output does not travel
                    envelope.event = ResultReceived(envelope.event.result)
                await keeper.forward(run_id, encode_command(envelope.event))
            except CordtrioError as exc:
                envelope.error = exc
            _answer(envelope)
    finally:
        for envelope in envelopes:
            if envelope.done is not None and not envelope.done.is_set():
                envelope.error = envelope.error or Redirect()
                envelope.done.set()


def _answer(envelope: Envelope) -> None:
    if envelope.done is not None:
        envelope.done.set()


async def forward_results(keeper: Inboxes, run_id: str,
                          envelopes: Sequence[Envelope]) -> int:
    """The owner lets the run go with these envelopes unapplied: queue the job results
    (nobody would resend them); API calls are answered by the caller's retry; commands
    taken from the inbox (``queued``) stay unacknowledged there, so the next owner applies
    them anyway. Returns how many were queued."""
    count = 0
    for envelope in envelopes:
        event = envelope.event
        if (envelope.done is not None or envelope.drain or envelope.queued
                or not isinstance(event, ResultReceived)):
            continue
        try:
            await keeper.forward(run_id, encode_command(ResultReceived(event.result)))
            count += 1
        except CordtrioError as exc:
            log.warning("run %s: could not hand result %s over: %s", run_id,
                        event.result.job_id, exc)
    return count


async def _check(store: Store, run_id: str, envelope: Envelope) -> None:
    """The errors an API call must give at once, read from the stored run."""
    event = envelope.event
    if isinstance(event, Approve):
        await retrying(lambda: check_approvable(store, run_id, event.step_id),
                       f"check approval of run {run_id}")
    elif isinstance(event, (CancelRun, Start)):
        await retrying(lambda: store.get_run(run_id), f"load run {run_id}")
