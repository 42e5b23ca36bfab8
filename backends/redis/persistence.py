"""Does the Redis server keep its data across a restart? (``CONFIG GET appendonly`` and
``save``.) ``cordtrio serve`` checks it at start: a Redis that keeps nothing loses every run,
workflow and queued command when it restarts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cordtrio.errors import CordtrioError

from .adapter import RedisAdapter


@dataclass(frozen=True)
class Persistence:
    """What the server reported; ``None`` where it would not say (``CONFIG`` disabled, as
    on several managed services)."""

    appendonly: bool | None
    save: str | None
    problem: str = ""
    """Why it could not be checked ("" when it was)."""

    @property
    def mode(self) -> str:
        """``aof``, ``rdb``, ``aof+rdb``, ``none`` or ``unknown``."""
        if self.appendonly is None or self.save is None:
            return "unknown"
        parts = [name for name, on in (("aof", self.appendonly), ("rdb", bool(self.save)))
                 if on]
        return "+".join(parts) or "none"

    @property
    def keeps_data(self) -> bool | None:
        """False when a restart loses everything, None when unknown."""
        mode = self.mode
        return None if mode == "unknown" else mode != "none"


def _value(reply: Any, name: str) -> str | None:
    if not isinstance(reply, dict):
        return None
    for key, value in reply.items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


async def check_persistence(redis: RedisAdapter) -> Persistence:
    """Ask the server (two ``CONFIG GET``); never raises a ``CordtrioError`` — a server that
    refuses ``CONFIG`` gives ``mode == "unknown"`` with the reason in ``problem``."""
    try:
        aof = _value(await redis.call("config get", "", "config_get", "appendonly"),
                     "appendonly")
        save = _value(await redis.call("config get", "", "config_get", "save"), "save")
    except CordtrioError as exc:
        return Persistence(None, None, problem=str(exc))
    return Persistence(None if aof is None else aof.strip().lower() == "yes",
                       None if save is None else save.strip(),
                       problem="" if aof is not None and save is not None
                       else "CONFIG GET gave no answer")


__all__ = ["Persistence", "check_persistence"]
