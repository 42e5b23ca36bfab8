"""Run timelines in Redis (``wf:run:timeline:<id>``, a list ``LTRIM``-ed to ``TIMELINE_CAP``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cordtrio.errors import ValidationError
from cordtrio.model import TimelineEvent
from cordtrio.ports import (
    DEFAULT_TIMELINE_LIMIT,
    TIMELINE_CAP,
)
from cordtrio.timeutil import format_ts

from .base import RedisStoreBase
from .keys import timeline_key
from .redis_errors import RedisDataError
from .run_hash import loads
from .run_json import event_docs

log = logging.getLogger(__name__)


class RedisTimelines(RedisStoreBase):
    """Mixin of ``RedisStore``: append and list timeline events; queue an append inside
    another transaction (``save_run_changes``)."""

    async def append_timeline_event(self, run_id: str, event: TimelineEvent) -> None:
        await self.append_timeline_events(run_id, (event,))

    async def append_timeline_events(
        self, run_id: str, events: Sequence[TimelineEvent]
    ) -> None:
        """Append a batch in order: ``RPUSH`` + ``LTRIM`` in one round trip."""
        docs = self._timeline_docs(run_id, events)
        if not docs:
            return
        key = timeline_key(run_id)
        await self._redis.pipeline(
            "append timeline", key,
            [("rpush", (key, *docs)), ("ltrim", (key, -TIMELINE_CAP, -1))],
            transaction=False,
        )

    @staticmethod
    def _queue_timeline(pipe: Any, run_id: str, docs: list[bytes]) -> None:
        if docs:
            key = timeline_key(run_id)
            pipe.rpush(key, *docs)
            pipe.ltrim(key, -TIMELINE_CAP, -1)

    def _timeline_docs(self, run_id: str, events: Sequence[TimelineEvent]) -> list[bytes]:
        if not run_id:
            raise ValidationError("run id required")
        if not events:
            return []
        return event_docs(events, run_id, self._now_text, ("run {!r}: timeline event", run_id))

    def _now_text(self) -> str | None:
        """The time of timeline events that have none."""
        return format_ts(self._now())

    async def list_timeline_events(
        self, run_id: str, limit: int = DEFAULT_TIMELINE_LIMIT
    ) -> list[TimelineEvent]:
        """The newest ``limit`` events of the run, oldest first; ``[]`` for an unknown run."""
        limit = limit if limit > 0 else DEFAULT_TIMELINE_LIMIT
        key = timeline_key(run_id)
        raws = await self._redis.call("list timeline", key, "lrange", key, -limit, -1)
        out: list[TimelineEvent] = []
        for raw in raws:
            try:
                out.append(TimelineEvent.from_dict(loads(raw, key)))
            except (RedisDataError, ValidationError) as exc:
                log.warning("run %r: corrupt timeline entry skipped: %s", run_id, exc)
        return out
