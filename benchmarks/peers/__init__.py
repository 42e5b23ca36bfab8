"""Other engines measured in the same invocation, for cordtrio/peer ratios.

A peer says why it cannot run here (``unavailable``: an import error, a missing server...),
and otherwise opens a session (its workers started) in which it measures the workloads it
has an equivalent for. Its samples are ``Sample``s like cordtrio's, with the peer's name as
the backend; latency is not measured for peers.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from ..measure import RedisStats, Sample


class PeerSession(Protocol):
    def run(self, workload: str, size: int, repeat: int) -> list[Sample]:
        """``repeat`` samples of ``workload`` at ``size`` (the peer may cap the size)."""


class Peer(Protocol):
    name: str
    """Shown as the backend in tables, e.g. ``celery (redis, solo)``."""
    key: str
    """Its ``--peers`` name, also the BACKEND of ``--size wN@BACKEND=...``."""
    workloads: tuple[str, ...]
    needs_redis: bool

    def unavailable(self) -> str | None:
        """Why this peer cannot run here, or None."""

    def session(self, redis: RedisStats | None,
                log: Callable[[str], None]) -> AbstractContextManager[PeerSession]: ...


def all_peers() -> dict[str, Callable[[], Peer]]:
    from .celery_bench import CeleryPeer
    from .prefect_bench import PrefectPeer

    return {"celery": CeleryPeer, "prefect": PrefectPeer}
