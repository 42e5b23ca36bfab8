"""The client's connection to the router: handshake, sending, receiving, liveness.

One ``pair1`` socket dials the router; nng redials by itself when the connection drops.
Every new connection starts with the router's ``hello`` (and, with a token, this client's
proof); on it the client registers its subscriptions and job consumers again and re-sends
the publishes still waiting for their ``puback``. Ops are batched into frames by one
writer task, with ``credit`` for the frames received. The client pings the router when
it has sent nothing for a while, and drops and redials a connection the router has been
silent on for longer than its liveness timeout. See ``docs/bus.md`` (*Connections,
restarts and leaving*, *Security*).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import pynng
import trio

from ._auth import RateLimited, proof
from ._common import LIVENESS_TIMEOUT, RECV_BATCH, WINDOW, RecentIds, Wakeup, take_frame
from ._io import TrioSocket, log
from .frames import PROTO, FrameError, Op, bytes_field, decode_frame, describe, int_field, op_name

if TYPE_CHECKING:
    from .client_host import ClientHost, Pending


class Connection:
    """The state of the current connection (``pipe_id`` is None between connections),
    its outbox and the tasks that drive it. ``refused`` says why the last connection was
    refused (empty once one is accepted); ``connections`` and ``liveness_resets`` count."""

    def __init__(self, bus: ClientHost, sock: pynng.Socket, *, heartbeat_interval: float,
                 token: str | None) -> None:
        self._bus = bus
        self._io = TrioSocket(sock)
        self.outbox: deque[Op | Pending] = deque()
        self._wake = Wakeup()
        self.pipe_id: int | None = None
        self._pipe: pynng.Pipe | None = None
        self._heartbeat = heartbeat_interval
        self._live = LIVENESS_TIMEOUT  # the router's, from its hello
        self._last_heard = 0.0  # Trio clock: the last frame from the router
        self._last_sent = 0.0  # the last frame handed to nng
        self._token = token
        self.accepted = False  # the router has said hello (and accepted our proof)
        self._auth_op: Op | None = None  # our proof, to go first on this connection
        self._auth_sent = False
        self._refusal_log = RateLimited(log)
        self.refused = ""
        self._dead = RecentIds()
        self._conn: int | None = None  # the router's token for this connection
        self._frames_in = 0  # frames received on this connection
        self._credit_sent = 0  # the last ``credit`` sent on it
        self._window = WINDOW
        self.connect_event = trio.Event()
        self._send_scope: trio.CancelScope | None = None
        self.byes: dict[int, trio.Event] = {}
        self.connections = 0
        self.liveness_resets = 0

    def queue(self, item: Op | Pending) -> None:
        self.outbox.append(item)
        self._wake.set()

    def _may_send(self) -> bool:
        """Ops may go out on this connection: without a token from the start (the router's
        hello is not awaited), with one once our proof is on its way ahead of them."""
        if self.pipe_id is None or self.refused:
            return False
        return self._token is None or self._auth_sent

    def close(self) -> None:
        self.connect_event.set()
        self._io.close()

    # ------------------------------------------------------------------ connections

    def pipe_added(self, pipe: pynng.Pipe) -> None:
        bus = self._bus
        pipe_id = pipe.id
        if bus.closed or pipe_id in self._dead or pipe_id == self.pipe_id:
            return
        if self.pipe_id is not None:
            self.pipe_removed(self.pipe_id)
        self.pipe_id = pipe_id
        self._pipe = pipe
        self.connections += 1
        self._conn = None
        self.accepted = self._auth_sent = False
        self._auth_op = None
        self._last_heard = self._last_sent = trio.current_time()
        self._frames_in = 0
        self._credit_sent = 0
        # Rebuild the outbox from the state: subscriptions (with fresh room), then the
        # publishes still unconfirmed, then packets bounced back to their groups.
        bounces = [op for op in self.outbox if isinstance(op, dict) and op["op"] == "bounce"]
        self.outbox.clear()
        self.outbox.extend(bus._pubsub.sub_ops())
        self.outbox.extend(bus._jobs.jobs_ops())
        self.outbox.extend(bus._pubsub.pending_pubs())
        self.outbox.extend(bounces)
        self._wake.set()
        if self.connections > 1:
            log.info("nng bus: reconnected to %s (%d subscriptions, %d publishes re-sent)",
                     bus.address, len(bus._pubsub.subs), len(bus._pubsub.pubs))

    def pipe_removed(self, pipe_id: int) -> None:
        bus = self._bus
        self._dead.add(pipe_id)
        if pipe_id != self.pipe_id:
            return
        self.pipe_id = None
        self._pipe = None
        self._conn = None
        self.accepted = False
        bus._jobs.reset()  # the router took those jobs back
        self.connect_event = trio.Event()
        if self._send_scope is not None:
            self._send_scope.cancel()
        for done in self.byes.values():  # nobody is going to answer those
            done.set()
        if not bus.closed:
            log.warning("nng bus: lost the connection to %s; redialling", bus.address)

    def _reset(self, silence: float) -> None:
        """Drop the current connection (nng redials)."""
        pipe, pipe_id = self._pipe, self.pipe_id
        if pipe is None or pipe_id is None:
            return
        self.liveness_resets += 1
        log.warning("nng bus: heard nothing from %s for %.1f s; dropping the connection "
                    "and redialling", self._bus.address, silence)
        self.pipe_removed(pipe_id)
        with contextlib.suppress(Exception):
            pipe.close()

    # ------------------------------------------------------------------ the handshake

    def _hello(self, op: Op) -> None:
        address = self._bus.address
        nonce = op.get("nonce")
        if nonce is not None and not isinstance(nonce, bytes):
            raise FrameError(f"'hello' op: 'nonce' must be bytes: {nonce!r}")
        if self._token is None:
            if nonce is not None:
                self._refuse(f"the router at {address} requires a token, and this "
                             "client has none")
            else:
                self._accept()
        elif nonce is None:
            self._refuse(f"the router at {address} has no token, and this client, "
                         "which has one, does not talk to a bus without authentication")
        elif self._conn is not None and not self._auth_sent:
            self._auth_op = {"op": "auth", "mac": proof(self._token, nonce, self._conn)}
            self._wake.set()

    def _accept(self) -> None:
        self.accepted = True
        self.refused = ""
        self.connect_event.set()

    def _refuse(self, reason: str) -> None:
        """The connection cannot be used (a token mismatch): say so, drop it (nng redials;
        ``open_nng_bus`` gives up if this is its first connection)."""
        self.refused = reason
        self._refusal_log.log(logging.ERROR, "nng bus: %s", reason)
        self.connect_event.set()  # wake open_nng_bus
        pipe, pipe_id = self._pipe, self.pipe_id
        if pipe_id is not None:
            self.pipe_removed(pipe_id)
        if pipe is not None:
            with contextlib.suppress(Exception):
                pipe.close()

    # ------------------------------------------------------------------ receiving

    async def receive_loop(self) -> None:
        await self._io.receive_forever(self._on_message, "nng bus", RECV_BATCH,
                                       gate=self._unpaused)

    async def _unpaused(self) -> None:
        while self._bus._paused is not None:
            await self._bus._paused.wait()

    async def heartbeat_loop(self) -> None:
        """Ping the router after ``heartbeat_interval`` of silence (so that it knows we are
        alive) and drop a connection the router has been silent on for longer than its
        liveness timeout."""
        while True:
            tick = min(self._heartbeat, self._live / 3) / 2
            await trio.sleep(tick)
            await self._unpaused()
            if self.pipe_id is None or not self.accepted:
                continue
            now = trio.current_time()
            if now - self._last_heard > self._live:
                self._reset(now - self._last_heard)
            elif now - self._last_sent >= 2 * tick and not self.outbox:
                self.queue({"op": "ping"})

    def _on_message(self, msg: pynng.Message) -> None:
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in self._dead:
            return
        if pipe_id != self.pipe_id:
            self.pipe_added(pipe)  # the frame overtook the connect event
        now = trio.current_time()
        if self._conn is not None and now - self._last_heard > self._live:
            # Nothing heard for longer than the router waits before cutting us off (this
            # process was stopped, or its loop blocked): the router has given our jobs to
            # others. Drop the connection before delivering anything that was on it.
            self._reset(now - self._last_heard)
            return
        self._last_heard = now
        self._frames_in += 1
        if self._frames_in - self._credit_sent >= self._window:
            self._wake.set()  # the router may be waiting for credit: send it on its own
        data = msg.bytes
        try:
            ops = decode_frame(data)
        except FrameError as exc:
            self._bus._garbage(f"frame ({describe(data)})", exc)
            return
        for op in ops:
            try:
                self._on_op(op)
            except FrameError as exc:
                self._bus._garbage("op", exc)

    def _on_op(self, op: Any) -> None:
        bus = self._bus
        # the usual op passes these class checks; any other goes through the field helpers,
        # which raise for it or take it
        name = op.get("op") if op.__class__ is dict else None
        if name.__class__ is not str:
            name = op_name(op)
        if name == "job":
            cid = op.get("cid")
            wire = op.get("packet")
            if cid.__class__ is not int or wire.__class__ is not bytes:
                cid = int_field(op, "cid")
                wire = bytes_field(op, "packet")
            bus._jobs.deliver(cid, wire)
        elif name == "msg":
            sid = op.get("sid")
            wire = op.get("packet")
            if sid.__class__ is not int or wire.__class__ is not bytes:
                sid = int_field(op, "sid")
                wire = bytes_field(op, "packet")
            bus._pubsub.deliver(sid, wire)
        elif name == "puback":
            pid = op.get("pid")
            bus._pubsub.puback(pid if pid.__class__ is int else int_field(op, "pid"),
                               op.get("error"))
        elif name == "suback":
            bus._pubsub.suback(int_field(op, "sid"))
        elif name == "jobsack":
            bus._jobs.jobsack(int_field(op, "cid"))
        elif name == "ping":
            pass  # hearing from the router is all it is for
        elif name == "authok":
            if self._auth_sent:
                self._accept()
        elif name == "denied":
            self._refuse(f"the router at {bus.address} refused this client's token")
        elif name == "bye":
            done = self.byes.get(int_field(op, "n"))
            if done is not None:
                done.set()
        elif name == "hello":
            self._conn = int_field(op, "conn")
            window = op.get("window")
            self._window = window if isinstance(window, int) and window > 0 else WINDOW
            live = op.get("live")
            valid = isinstance(live, int | float) and not isinstance(live, bool)
            self._live = float(live) if valid and 0 < live < math.inf else LIVENESS_TIMEOUT
            if op.get("proto") != PROTO:
                log.warning("nng bus: router at %s speaks protocol %r, this client %d",
                            bus.address, op.get("proto"), PROTO)
            self._hello(op)
        else:
            raise FrameError(f"unknown op {name!r}")

    # ------------------------------------------------------------------ sending

    async def writer_loop(self) -> None:
        bus = self._bus
        while True:
            if bus._paused is not None:
                await bus._paused.wait()
                continue
            # Credit rides along with every frame; on its own only when the router may
            # have run out of it (``window`` frames received since the last credit).
            owed = self._frames_in - self._credit_sent if self._conn is not None else 0
            auth = self._auth_op if self.pipe_id is not None else None
            if auth is None and (not self._may_send()
                                 or not (self.outbox or owed >= self._window)):
                await self._wake.wait()
                continue
            first: list[Op] = []
            if auth is not None:  # our proof goes first; the rest may follow it at once
                first.append(auth)
                self._auth_op = None
                self._auth_sent = True
            if owed:
                first.append({"op": "credit", "conn": self._conn, "n": self._frames_in})
                self._credit_sent = self._frames_in
            frame, _ = take_frame(self.outbox, first, bus._pubsub.resolve)
            self._last_sent = trio.current_time()
            with trio.CancelScope() as scope:
                self._send_scope = scope
                try:
                    await self._io.send(pynng.Message(frame))
                except pynng.NNGException as exc:
                    log.warning("nng bus: sending to %s failed: %s", bus.address, exc)
            self._send_scope = None


__all__ = ["Connection"]
