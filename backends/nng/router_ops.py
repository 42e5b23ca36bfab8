"""The router's receiving side: frames from clients, and what each op does.

Every frame is decoded, checked and split into ops (see the table in ``docs/bus.md``,
*Frame format*); each op goes to the part of the router that owns it: subscriptions and
room to ``Delivery``, job consumers and acknowledgements to ``JobDelivery``, credit to
``Peers``, the token handshake and forbidden publishes to ``Gate``. A malformed frame or
op is logged (rate-limited), counted in ``dropped_frames`` and dropped; nothing on the wire
raises out of the receive loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pynng
import trio

from cordtrio.protocol import SUBJECT_CANCEL, SUBJECT_RESULT, SUBJECT_SUBMIT, BusPacket
from cordtrio.ratelog import rate_limited

from ._common import RECV_BATCH
from ._io import log
from .frames import (
    FrameError,
    Op,
    bytes_field,
    decode_frame,
    describe,
    int_field,
    op_name,
    str_field,
)
from .router_jobs import HELD_PAYLOADS

if TYPE_CHECKING:
    from ..job_queues import Consumer
    from .router_host import RouterHost
    from .table import _Peer


def packet_field(op: Op) -> bytes:
    """A packet's bytes, checked to be a CBOR map (fully decoded only by subscribers)."""
    wire = bytes_field(op, "packet")
    if not wire or not 0xA0 <= wire[0] <= 0xBF:
        raise FrameError(f"{op.get('op')!r} op: the packet is not a CBOR map "
                         f"({describe(wire)})")
    return wire


class OpHandler:
    """Reads the router's socket and handles every op clients send."""

    def __init__(self, router: RouterHost) -> None:
        self._router = router
        self._sole = router._delivery.table.sole  # (updated in place, never replaced)

    async def receive_loop(self) -> None:
        await self._router._io.receive_forever(self._on_message, "nng router", RECV_BATCH)

    def _on_message(self, msg: pynng.Message) -> None:
        conns = self._router._conns
        pipe = msg.pipe
        pipe_id = pipe.id if pipe is not None else -1
        if pipe is None or pipe_id < 0 or pipe_id in conns.dead:
            return  # from a connection that is already gone
        peer = conns.by_pipe.get(pipe_id) or conns.open(pipe, pipe_id)
        if peer.doomed:
            return
        peer.last_heard = trio.current_time()
        data = msg.bytes
        try:
            ops = decode_frame(data)
        except FrameError as exc:
            self._garbage(peer, f"frame ({describe(data)})", exc)
            return
        if not peer.authed:
            ops = self._router._gate.authenticate(peer, ops)
        on_pub = self._on_pub
        for op in ops:
            try:
                # a publish, the usual op, without ``_on_op``'s dispatch (which takes the
                # same branch for it)
                if op.__class__ is dict and op.get("op") == "pub":
                    on_pub(peer, op)
                else:
                    self._on_op(peer, op)
            except FrameError as exc:
                self._garbage(peer, "op", exc)

    def _garbage(self, peer: _Peer, what: str, exc: Exception) -> None:
        self._router.dropped_frames += 1
        rate_limited(log).warning(f"{id(self._router)} {what}", "nng router: dropped a "
                                  "malformed %s from pipe %d: %s", what, peer.id, exc)

    def _on_op(self, peer: _Peer, op: Any) -> None:
        router = self._router
        name = op.get("op") if op.__class__ is dict else None
        if name.__class__ is not str:
            name = op_name(op)  # raises
        if name == "pub":
            self._on_pub(peer, op)
        elif name == "room":
            sid = int_field(op, "sid")
            n = int_field(op, "n")
            if n < 0:
                raise FrameError(f"'room' op: negative room {n}")
            router._delivery.remote_room(peer, sid, n)
        elif name == "credit":
            router._conns.credit(peer, int_field(op, "conn"), int_field(op, "n"))
        elif name == "ack":
            cid = int_field(op, "cid")
            router._jobs.ack_remote(peer, cid, str_field(op, "jid", empty=False))
        elif name in ("ping", "auth"):
            pass  # hearing from the client is all a ping is for; auth: already proven
        elif name == "sub":
            sid = int_field(op, "sid")
            subject = str_field(op, "subject", empty=False)
            queue = str_field(op, "queue", default="")
            room = op.get("room")
            if room is not None and (not isinstance(room, int) or isinstance(room, bool)
                                     or room < 0):
                raise FrameError(f"'sub' op: 'room' must be an integer >= 0: {room!r}")
            router._delivery.add_remote(peer, sid, subject, queue, room)
        elif name == "unsub":
            router._delivery.remove_remote(peer, int_field(op, "sid"))
        elif name == "jobs":
            cid = int_field(op, "cid")
            capacity = int_field(op, "cap")
            topics = op.get("topics")
            if (not isinstance(topics, list) or not topics
                    or not all(isinstance(t, str) and t for t in topics)):
                raise FrameError(f"'jobs' op: 'topics' must be a non-empty list of "
                                 f"strings: {topics!r}")
            if capacity < 1:
                raise FrameError(f"'jobs' op: 'cap' must be >= 1: {capacity}")
            router._jobs.add_remote(peer, cid, topics, capacity)
        elif name == "unjobs":
            router._jobs.remove_remote(peer, int_field(op, "cid"))
        elif name == "bye":  # answered after every op before it: the client may go
            router._conns.send(peer, {"op": "bye", "n": int_field(op, "n")})
        elif name == "bounce":
            subject = str_field(op, "subject", empty=False)
            queue = str_field(op, "queue", empty=False)
            wire = packet_field(op)
            if not router._gate.refused(peer, subject, wire, "")[0]:
                router._delivery.bounce(subject, queue, wire)
        else:
            raise FrameError(f"unknown op {name!r}")

    def _on_pub(self, peer: _Peer, op: Op) -> None:
        router = self._router
        pid = op.get("pid")
        subject = op.get("subject")
        wire = op.get("packet")
        # the usual op passes these class checks; any other goes through the field helpers,
        # which raise for it (in this order) or take it
        if (pid.__class__ is not int or subject.__class__ is not str or not subject
                or wire.__class__ is not bytes or not wire or wire[0] >> 5 != 5):  # 0xA0-0xBF
            pid = int_field(op, "pid")
            subject = str_field(op, "subject", empty=False)
            wire = packet_field(op)
        job_id = op.get("jid", "")
        if job_id.__class__ is not str:
            job_id = str_field(op, "jid")
        kind = HELD_PAYLOADS.get(subject)
        if kind is not None:  # a result or progress: the holder rule (``Gate.refused``)
            # a worker's result may carry its job's acknowledgement (the consumer's ``cid``)
            cid = None
            if job_id and subject == SUBJECT_RESULT and "ack" in op:
                cid = op["ack"]
                if cid.__class__ is not int:
                    cid = int_field(op, "ack")
            # the subject's one listener reads payloads alone (the engine's results): the
            # packet is decoded bare, and handed to it as ``fan_out`` would hand it
            sole = self._sole.get(subject)
            bare = sole is not None and sole.on_payload is not None
            reason, packet, holder = router._jobs.holder_refusal(peer, kind, subject, wire,
                                                                 job_id, bare)
            if not reason:
                # acknowledged by the consumer found holding the job, if it is that one (no
                # other consumer holds it: acknowledging it there would do nothing)
                ack = (holder, job_id) if cid is not None and holder is not None \
                    and holder.handle.cid == cid else None
                if bare:
                    router._delivery.hand_payload(sole, packet)  # type: ignore[arg-type]
                    self._handed_out(peer, pid, ack)
                else:
                    self.fan_out(peer, pid, subject, wire, packet, ack)
                return
            router._gate.forbid(peer, subject, reason)
        else:
            reason = router._gate.order_refusal(peer, subject)
            if not reason:
                if subject == SUBJECT_SUBMIT and job_id:
                    topic = str_field(op, "topic", empty=False)
                    if router._jobs.queues.full:  # no puback until the queues have room
                        assert router._nursery is not None
                        router._nursery.start_soon(router._jobs.publish_later, peer, pid,
                                                   subject, wire, job_id, topic)
                        return
                    router._jobs.offer(job_id, topic, wire)
                elif subject == SUBJECT_CANCEL and job_id:
                    router._jobs.cancel(job_id)
                self.fan_out(peer, pid, subject, wire)
                return
            router._gate.forbid(peer, subject, reason)
        router._conns.send(peer, {"op": "puback", "pid": pid, "error": f"forbidden: {reason}"})

    def fan_out(self, peer: _Peer, pid: int, subject: str, wire: bytes,
                packet: BusPacket | None = None, ack: tuple[Consumer, str] | None = None
                ) -> None:
        """Deliver a client's publish (``packet``: ``wire`` decoded already, for a local
        subscriber to take); ``puback`` once every subscriber has it, and then acknowledge
        the job ``ack`` names (the consumer holding it, job id): a result that carried
        it."""
        router = self._router
        waits = router._delivery.deliver(subject, wire, packet)
        if waits:
            assert router._nursery is not None
            router._nursery.start_soon(self._finish_publish, peer, pid, waits, ack)
        else:
            self._handed_out(peer, pid, ack)

    async def _finish_publish(
        self, peer: _Peer, pid: int, waits: list[Callable[[], Awaitable[None]]],
        ack: tuple[Consumer, str] | None,
    ) -> None:
        for wait in waits:
            await wait()
        self._handed_out(peer, pid, ack)

    def _handed_out(self, peer: _Peer, pid: int, ack: tuple[Consumer, str] | None) -> None:
        router = self._router
        router._conns.send(peer, {"op": "puback", "pid": pid})
        if ack is not None and not peer.closed:
            router._jobs.ack_held(*ack)


__all__ = ["OpHandler", "packet_field"]
