"""Run leases and per-run command inboxes in memory (``cordtrio.ports.RunLeases``).

Several engines in one process can share one ``MemoryStore`` exactly as they would share a
Redis server: the same lease rules, the same inboxes, the same wake-ups (open them with
``multi_engine=True``; see ``MemoryRunLeases``). Lease expiry is
measured on Trio's clock (``trio.current_time()``), so under ``MockClock`` a lease of an
engine that stopped renewing expires in virtual time. Every method is one Trio checkpoint
followed by code that does not yield, so each call is atomic, like a Redis script.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from cordtrio.errors import LeaseLostError


@dataclass
class LeaseBook:
    """The lease and inbox state of one store."""

    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # run → owner, expiry
    inboxes: dict[str, list[bytes]] = field(default_factory=dict)
    processing: dict[str, list[bytes]] = field(default_factory=dict)  # taken, not acked
    wakes: dict[str, deque[str]] = field(default_factory=dict)  # owner → woken run ids
    unassigned: deque[str] = field(default_factory=deque)
    signal: trio.Event = field(default_factory=trio.Event)

    def holder(self, run_id: str) -> str | None:
        held = self.leases.get(run_id)
        if held is None:
            return None
        if held[1] <= trio.current_time():
            del self.leases[run_id]
            return None
        return held[0]

    def notify(self) -> None:
        self.signal.set()
        self.signal = trio.Event()


class MemoryRunLeases:
    """Mixin of ``MemoryStore``: the ``RunLeases`` methods over a ``LeaseBook``.

    ``multi_engine_default = False``: a memory store normally serves one engine in its
    process, so ``open_engine`` stays single-engine over it (no lease renewals, no takeover
    scans — which would also wake a ``MockClock`` every few virtual seconds) unless asked
    with ``multi_engine=True`` or given an ``engine_id``, as the multi-engine tests do.
    """

    multi_engine_default = False

    _lease_book: LeaseBook

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        holder = book.holder(run_id)
        if holder is not None and holder != owner:
            return False
        book.leases[run_id] = (owner, trio.current_time() + ttl)
        return True

    async def renew_leases(self, owner: str, run_ids: Sequence[str], ttl: float) -> set[str]:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        lost: set[str] = set()
        expiry = trio.current_time() + ttl
        for run_id in run_ids:
            if book.holder(run_id) == owner:
                book.leases[run_id] = (owner, expiry)
            else:
                lost.add(run_id)
        return lost

    async def release_lease(self, run_id: str, owner: str) -> None:
        await trio.lowlevel.checkpoint()
        self._release(run_id, owner)

    def _release(self, run_id: str, owner: str) -> None:
        """``release_lease`` after its checkpoint (also the end of a fenced write with
        ``RunChanges.release_lease``: one atomic step with it)."""
        book = self._lease_book
        if book.holder(run_id) == owner:
            del book.leases[run_id]
            if run_id in book.inboxes or run_id in book.processing:  # left unapplied
                book.unassigned.append(run_id)
                book.notify()

    async def lease_owner(self, run_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._lease_book.holder(run_id)

    async def unleased(self, run_ids: Sequence[str]) -> list[str]:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        return [run_id for run_id in run_ids if book.holder(run_id) is None]

    def _check_fence(self, run_id: str, owner: str) -> None:
        """``save_run_changes`` with ``changes.lease_owner``: called after its checkpoint,
        so the check and the write are one atomic step."""
        holder = self._lease_book.holder(run_id)
        if holder != owner:
            raise LeaseLostError(
                f"run {run_id}: lease held by {holder or 'nobody'}, not {owner}; not written")

    async def push_command(self, run_id: str, data: bytes) -> str | None:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        book.inboxes.setdefault(run_id, []).append(bytes(data))
        holder = book.holder(run_id)
        if holder is None:
            book.unassigned.append(run_id)
        else:
            book.wakes.setdefault(holder, deque()).append(run_id)
        book.notify()
        return holder

    async def push_unassigned(self, run_id: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        book.inboxes.setdefault(run_id, []).append(bytes(data))
        book.unassigned.append(run_id)
        book.notify()

    async def take_commands(self, run_id: str) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        taken = book.processing.get(run_id, []) + book.inboxes.pop(run_id, [])
        if taken:
            book.processing[run_id] = taken
        return list(taken)

    async def ack_commands(self, run_id: str, owner: str, count: int) -> bool:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        if book.holder(run_id) != owner:
            return False
        left = book.processing.get(run_id, [])[max(count, 0):]
        if left:
            book.processing[run_id] = left
        else:
            book.processing.pop(run_id, None)
        return True

    async def runs_with_commands(self, limit: int = 1000) -> list[str]:
        await trio.lowlevel.checkpoint()
        book = self._lease_book
        ids = dict.fromkeys([*book.processing, *book.inboxes])
        return list(ids)[:max(limit, 0)]

    async def wait_wakeups(self, owner: str, timeout: float) -> list[str]:
        book = self._lease_book
        with trio.move_on_after(timeout):
            while True:
                await trio.lowlevel.checkpoint()
                mine = book.wakes.get(owner)
                if mine:
                    return [mine.popleft()]
                if book.unassigned:
                    return [book.unassigned.popleft()]
                await book.signal.wait()
        return []


__all__ = ["LeaseBook", "MemoryRunLeases"]
