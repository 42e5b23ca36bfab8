"""What feeds an engine's runs besides its API: the bus messages the engine listens to (job
results, workers' start acknowledgements) and the resend sweep (SPEC §13).

Routing a message to its run is the engine's (``Engine._on_result``, ``_on_progress``);
this module connects those callbacks to the bus, and says which run a job's message is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..core.events import ResendDue
from ..ports import Bus, DirectBus
from ..protocol import BusPacket
from .envelopes import Envelope, Item

RESULT_QUEUE = "cordtrio-workflow-engine"
"""The queue group engines listen in: each job result reaches one engine."""


async def listen(bus: Bus, subject: str, on_packet: Callable[[BusPacket], None], *,
                 on_payload: Callable[[Any], None] | None = None,
                 task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_packet`` with every packet of ``subject`` (in queue group
    ``RESULT_QUEUE``) until cancelled: from within the publisher's call on a bus in this
    process (``DirectBus``: no task in between), else from a subscription. For
    ``nursery.start``: started once the engine listens. ``on_payload``, which does what
    ``on_packet`` does from a packet's payload alone, is offered to a bus that takes it
    (``DirectBus.listens_for_payloads``): one that may then hand it a payload with no
    packet built around it."""
    if isinstance(bus, DirectBus):
        if on_payload is not None and getattr(bus, "listens_for_payloads", False):
            listening = bus.listen(subject, RESULT_QUEUE, on_packet,
                                   on_payload=on_payload)  # type: ignore[call-arg]
        else:
            listening = bus.listen(subject, RESULT_QUEUE, on_packet)
        async with listening:
            task_status.started()
            await trio.sleep_forever()
    async with bus.subscribe(subject, queue=RESULT_QUEUE) as channel:
        task_status.started()
        async for packet in channel:
            on_packet(packet)


async def resend_sweep(every: float, runs: dict[str, Any],
                       deliver: Callable[[str, Item], None]) -> None:
    """Every ``every`` seconds, have each active run (a key of ``runs``) publish again its
    jobs that have had no result for that long (``core.commands.resend_due``): one sweep
    for the whole engine, nothing per job."""
    while True:
        await trio.sleep(every)
        for run_id in tuple(runs):
            deliver(run_id, Envelope(ResendDue()))


def run_id_of(message: object) -> str | None:
    """The run a job's message is for: its job id up to the last ``:`` (None: no job id,
    or one that names no run)."""
    job_id = getattr(message, "job_id", None)
    if not isinstance(job_id, str) or ":" not in job_id:
        return None
    run_id = job_id.rpartition(":")[0]
    return run_id or None


__all__ = ["RESULT_QUEUE", "listen", "resend_sweep", "run_id_of"]
