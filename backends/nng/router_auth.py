"""The router's admission rules: the token handshake and the ops a connection may not do.

With a token, every connection starts with a challenge (``nonce`` in its ``hello``) and
must answer it with a good ``auth`` before anything it sends is handled; one that cannot
is told (``denied``), counted and closed. What a connection publishes is checked too: on a
router with a token, a connection that takes jobs may not publish job requests or
cancels, and only the connection holding a job may publish its result or progress (the
holder rule, ``router_jobs.py``). The proof itself is ``_auth.py``. See ``docs/bus.md``
(*Security*).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cordtrio.protocol import SUBJECT_CANCEL, SUBJECT_SUBMIT, BusPacket

from ._auth import RateLimited, new_nonce, verify
from ._io import log
from .frames import Op
from .router_jobs import HELD_PAYLOADS
from .table import remote_address

if TYPE_CHECKING:
    from ..job_queues import Consumer
    from .router_host import RouterHost
    from .table import _Peer

DENIED_LINGER = 0.2
"""Seconds a refused connection stays open so that the ``denied`` frame reaches it."""


class Gate:
    """Who may use the router (``token``), and what they may publish; ``auth_failures``
    counts the connections refused, ``forbidden_ops`` the packets dropped."""

    def __init__(self, router: RouterHost, token: str | None) -> None:
        self._router = router
        self.token = token
        self._auth_log = RateLimited(log)
        self._forbidden_log = RateLimited(log)
        self.auth_failures = 0
        self.forbidden_ops = 0

    # ------------------------------------------------------------------ the handshake

    def challenge(self, peer: _Peer, hello: Op) -> None:
        """With a token, the connection's ``hello`` carries a nonce to prove it against."""
        if self.token is not None:
            peer.authed = False
            peer.nonce = hello["nonce"] = new_nonce()

    def authenticate(self, peer: _Peer, ops: list[Any]) -> list[Any]:
        """The first op of an unauthenticated connection must be a good ``auth``: then the
        rest of the frame is handled; else nothing is, and the connection is refused."""
        assert self.token is not None
        first = ops[0] if ops else None
        if not isinstance(first, dict) or first.get("op") != "auth":
            self.deny(peer, "it sent something else before proving it holds the token")
            return []
        if not verify(self.token, peer.nonce, peer.token, first.get("mac")):
            self.deny(peer, "its proof does not match the token")
            return []
        peer.authed = True
        self._router._conns.send(peer, {"op": "authok"})
        return ops[1:]

    def deny(self, peer: _Peer, reason: str) -> None:
        """A connection that cannot prove it holds the token: tell it, count it, close it."""
        if peer.doomed or peer.closed:
            return
        conns = self._router._conns
        self.auth_failures += 1
        self._auth_log.log(logging.WARNING, "nng router: refused client pipe %d (%s): %s",
                           peer.id, remote_address(peer.pipe), reason)
        conns.send(peer, {"op": "denied"})
        peer.doomed = reason
        nursery = self._router._nursery
        assert nursery is not None
        nursery.start_soon(conns.cut, peer, DENIED_LINGER)

    # ------------------------------------------------------------------ forbidden ops

    def refused(self, peer: _Peer, subject: str, wire: bytes, claimed: str
                ) -> tuple[str, BusPacket | None, Consumer | None]:
        """Why ``peer`` may not publish this job packet ("" if it may): job results and
        progress only from the connection holding the job (the router's own process may
        publish anything); on a router with a token, no job requests or cancels from a
        connection that takes jobs. Counted, logged (rate-limited). With it, the packet
        if the check decoded it and the consumer holding its job
        (``JobDelivery.holder_refusal``)."""
        kind = HELD_PAYLOADS.get(subject)
        if kind is None:
            reason = self.order_refusal(peer, subject)
            packet = holder = None
        else:
            reason, packet, holder = self._router._jobs.holder_refusal(
                peer, kind, subject, wire, claimed)
        if reason:
            self.forbid(peer, subject, reason)
        return reason, packet, holder

    def order_refusal(self, peer: _Peer, subject: str) -> str:
        """Why ``peer`` may not publish a job request or cancel ("" if it may, or if
        ``subject`` is neither)."""
        if (subject != SUBJECT_SUBMIT and subject != SUBJECT_CANCEL) or self.token is None \
                or not peer.consumers:
            return ""
        return "a connection that takes jobs may not publish job requests or cancels"

    def forbid(self, peer: _Peer, subject: str, reason: str) -> None:
        """Count and log (rate-limited) a packet refused for ``reason``."""
        self.forbidden_ops += 1
        self._forbidden_log.log(logging.WARNING, "nng router: dropped a packet on %r "
                                "from client pipe %d: %s", subject, peer.id, reason)


__all__ = ["DENIED_LINGER", "Gate"]
