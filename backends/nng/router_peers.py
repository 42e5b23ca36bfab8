"""The router's client connections: their records, sending to them, liveness, cut-offs.

Every client connection (an nng pipe) has a record (``_Peer``) with its outbox, its
subscriptions and job consumers. Frames towards a client are batched by one writer task,
never more than ``WINDOW`` unconfirmed (``credit``). The router pings clients it has sent
nothing to, cuts off clients it has heard nothing from for the liveness timeout, and cuts
off slow consumers: a plain subscription without room for ``slow_consumer_timeout``, or
more than ``max_pending_bytes`` waiting for one client. See ``docs/bus.md`` (*Flow
control*, *Connections, restarts and leaving*).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from typing import TYPE_CHECKING

import pynng
import trio

from ._common import WINDOW, RecentIds, Wakeup, take_counted_frame
from ._io import log
from .frames import PROTO, Op
from .table import _Peer, remote_address

if TYPE_CHECKING:
    from .router_host import RouterHost


class Peers:
    """The router's client connections, by pipe id; ``liveness_cuts`` and
    ``slow_consumers`` count the clients cut off."""

    def __init__(self, router: RouterHost) -> None:
        self._router = router
        self.by_pipe: dict[int, _Peer] = {}
        self.dead = RecentIds()  # pipes gone: frames still arriving from them are stale
        self._ready: deque[_Peer] = deque()
        self._wake = Wakeup()
        self.liveness_cuts = 0
        self.slow_consumers = 0

    @property
    def queued_bytes(self) -> int:
        return sum(peer.queued_bytes for peer in self.by_pipe.values())

    # ------------------------------------------------------------------ sending

    def send(self, peer: _Peer, op: Op) -> None:
        if peer.closed or peer.doomed:
            return
        packet = op.get("packet")
        if packet is not None:
            size = len(packet)
            queued = peer.queued_bytes + size
            if queued > self._router.max_pending_bytes:
                self.over_bound(peer, packet)  # cuts it off
                return
            peer.queued_bytes = queued
            peer.outbox_bytes += size
        peer.outbox.append(op)
        if not peer.queued:  # (else the writer has it in its queue already)
            self.kick(peer)

    def kick(self, peer: _Peer) -> None:
        if not peer.queued and peer.can_send():
            peer.queued = True
            self._ready.append(peer)
            self._wake.set()

    def credit(self, peer: _Peer, conn: int, received: int) -> None:
        """The client has received ``received`` frames on connection ``conn``."""
        if conn == peer.token and received > peer.credited:
            peer.credited = min(received, peer.sent)
            self.kick(peer)

    async def writer_loop(self) -> None:
        while True:
            if not self._ready:
                await self._wake.wait()
                continue
            peer = self._ready.popleft()
            peer.queued = False
            if not peer.can_send():
                continue
            frame, packet_bytes = take_counted_frame(peer.outbox, peer.outbox_bytes)
            peer.queued_bytes -= packet_bytes
            peer.outbox_bytes -= packet_bytes
            peer.sent += 1
            peer.last_sent = trio.current_time()
            try:
                await self._router._io.send(pynng.Message(frame, peer.pipe))
            except pynng.NNGException as exc:
                log.warning("nng router: sending to pipe %d failed: %s", peer.id, exc)
            self.kick(peer)

    # ------------------------------------------------------------------ connections

    def open(self, pipe: pynng.Pipe, pipe_id: int) -> _Peer:
        router = self._router
        peer = _Peer(pipe, pipe_id, secrets.randbits(62), trio.current_time())
        self.by_pipe[pipe_id] = peer
        hello: Op = {"op": "hello", "conn": peer.token, "proto": PROTO, "window": WINDOW,
                     "live": router.liveness_timeout}
        router._gate.challenge(peer, hello)
        self.send(peer, hello)
        log.debug("nng router: client pipe %d connected", pipe_id)
        return peer

    def close(self, peer: _Peer) -> None:
        peer.closed = True
        peer.outbox.clear()
        peer.outbox_bytes = 0
        for sub in tuple(peer.subs.values()):
            self._router._delivery.drop_sub(sub)
        peer.queued_bytes = 0
        consumers = tuple(peer.consumers.values())
        peer.consumers.clear()
        for consumer in consumers:
            self._router._jobs.remove_consumer(consumer)
        log.debug("nng router: client pipe %d gone", peer.id)

    def pipe_added(self, pipe: pynng.Pipe) -> None:
        pipe_id = pipe.id
        if self._router.closed or pipe_id in self.dead or pipe_id in self.by_pipe:
            return
        self.open(pipe, pipe_id)

    def pipe_removed(self, pipe_id: int) -> None:
        self.dead.add(pipe_id)
        peer = self.by_pipe.pop(pipe_id, None)
        if peer is not None:
            self.close(peer)

    def end(self) -> None:
        """The router is closing: forget every connection."""
        for peer in tuple(self.by_pipe.values()):
            peer.closed = True
            peer.outbox.clear()
            peer.outbox_bytes = 0
        self.by_pipe.clear()

    # ------------------------------------------------------------------ cut-offs

    def over_bound(self, peer: _Peer, wire: bytes) -> bool:
        """Queueing ``wire`` for ``peer`` would pass ``max_pending_bytes``: it is cut off
        instead (a client that does not keep up)."""
        limit = self._router.max_pending_bytes
        if peer.queued_bytes + len(wire) <= limit:
            return False
        self.doom(peer, f"more than {limit} bytes of packets would wait for it", slow=True)
        return True

    def doom(self, peer: _Peer, reason: str, *, slow: bool = False) -> None:
        """Cut ``peer`` off as soon as the current operation is over (nothing more is
        queued for it meanwhile)."""
        if peer.doomed or peer.closed:
            return
        peer.doomed = reason
        peer.outbox.clear()
        peer.outbox_bytes = 0
        if slow:
            self.slow_consumers += 1
        nursery = self._router._nursery
        assert nursery is not None
        nursery.start_soon(self.cut, peer)

    async def cut(self, peer: _Peer, linger: float = 0.0) -> None:
        if linger:
            await trio.sleep(linger)
        if peer.closed:
            return
        if peer.authed:
            log.warning("nng router: cut off client pipe %d (%s): %s", peer.id,
                        remote_address(peer.pipe), peer.doomed)
        with contextlib.suppress(Exception):
            peer.pipe.close()
        self.pipe_removed(peer.id)

    async def check_loop(self) -> None:
        """Ping idle clients, cut off silent ones and subscribers that stay without room.
        Time during which the router itself did not run (a stalled or stopped process)
        does not count against its clients."""
        router = self._router
        blocked = router._delivery.blocked
        tick = min(router.heartbeat_interval, router.liveness_timeout,
                   router.slow_consumer_timeout) / 4
        last = trio.current_time()
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            stalled = now - last - tick
            last = now
            if stalled > tick:
                for peer in self.by_pipe.values():
                    peer.last_heard += stalled
                for sub in blocked:
                    if sub.blocked_since is not None:
                        sub.blocked_since += stalled
            for peer in tuple(self.by_pipe.values()):
                if peer.doomed:
                    continue
                if not peer.authed:
                    if now - peer.last_heard > router.liveness_timeout:
                        router._gate.deny(peer, f"no proof that it holds the token within "
                                                f"{router.liveness_timeout:g} s")
                    continue
                if now - peer.last_heard > router.liveness_timeout:
                    self.liveness_cuts += 1
                    self.doom(peer, f"heard nothing from it for "
                                    f"{now - peer.last_heard:.1f} s")
                elif now - peer.last_sent >= router.heartbeat_interval and not peer.outbox:
                    peer.last_sent = now  # don't queue another ping before this one goes
                    self.send(peer, {"op": "ping"})
            for sub in tuple(blocked):
                owner = sub.peer
                if (owner is not None and sub.blocked_since is not None
                        and now - sub.blocked_since > router.slow_consumer_timeout):
                    self.doom(owner, f"its subscription to {sub.subject!r} had no room for "
                                     f"{now - sub.blocked_since:.1f} s", slow=True)


__all__ = ["Peers", "remote_address"]
