"""Workflow definitions in Redis (``wf:def:<id>``, ``wf:index:all``, ``wf:index:org:<org>``):
the workflow half of ``RedisStore``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cordtrio.errors import NotFoundError, ValidationError
from cordtrio.model import Workflow
from cordtrio.ports import DEFAULT_WORKFLOW_LIMIT
from cordtrio.timeutil import format_ts, parse_ts
from cordtrio.validation import validate_workflow

from .base import RedisStoreBase
from .keys import (
    WF_INDEX_ALL,
    workflow_key,
    workflow_org_index,
)
from .redis_errors import RedisDataError
from .run_hash import dumps, loads, text

log = logging.getLogger(__name__)

PARSED_WORKFLOWS_KEPT = 256
"""Workflow definitions ``get_workflow`` keeps parsed (the oldest read goes first)."""


def check_workflow_id(workflow_id: str) -> None:
    if workflow_id == "all" or workflow_id.startswith(("status:", "active:")):
        raise ValidationError(
            f"workflow {workflow_id!r}: id not allowed with the Redis store "
            f"(key wf:runs:{workflow_id} is taken by another index)"
        )



class RedisWorkflows(RedisStoreBase):
    """Mixin of ``RedisStore``: save, get, delete and list workflows."""

    async def save_workflow(self, wf: Workflow) -> None:
        """Validate (SPEC §1) and upsert ``wf``; sets ``created_at`` on the first save and
        ``updated_at`` on every save, on the stored copy and on ``wf``."""
        validate_workflow(wf)
        if not wf.id:
            raise ValidationError("workflow id required")
        check_workflow_id(wf.id)
        key = workflow_key(wf.id)
        now = self._now()
        stamped: dict[str, datetime | None] = {}

        async def txn(pipe: Any) -> None:
            old_raw = await pipe.get(key)
            old_created: datetime | None = None
            old_org = ""
            if old_raw is not None:
                try:
                    old = loads(old_raw, key)
                    old_org = str(old.get("org_id") or "")
                    old_created = parse_ts(old.get("created_at"))
                except (RedisDataError, AttributeError, ValueError) as exc:
                    log.warning("workflow %r: overwriting a corrupt entry: %s", wf.id, exc)
            created = old_created or wf.created_at or now
            doc = wf.to_dict()
            doc["created_at"] = format_ts(created)
            doc["updated_at"] = format_ts(now)
            score = now.timestamp()
            pipe.multi()
            pipe.set(key, dumps(doc, f"workflow {wf.id!r}"))
            if old_org and old_org != wf.org_id:
                pipe.zrem(workflow_org_index(old_org), wf.id)
            pipe.zadd(WF_INDEX_ALL, {wf.id: score})
            if wf.org_id:
                pipe.zadd(workflow_org_index(wf.org_id), {wf.id: score})
            await pipe.execute()
            stamped["created"] = created

        await self._redis.transaction("save workflow", key, [key], txn)
        wf.created_at = stamped["created"]
        wf.updated_at = now

    async def get_workflow(self, workflow_id: str) -> Workflow:
        key = workflow_key(workflow_id)
        raw = await self._redis.call("get workflow", key, "get", key)
        # a copy: callers may change what they get, as from the memory store
        return self._parsed(workflow_id, key, raw).clone()

    async def get_workflow_shared(self, workflow_id: str) -> Workflow:
        """``get_workflow`` without the copy (``ports.SharedWorkflows``): the definition
        kept for the stored bytes itself, which the caller must not change. The bytes are
        read as by ``get_workflow``, so a definition saved by anyone is seen at once."""
        key = workflow_key(workflow_id)
        return self._parsed(workflow_id, key,
                            await self._redis.call("get workflow", key, "get", key))

    def _parsed(self, workflow_id: str, key: str, raw: bytes | None) -> Workflow:
        """The definition the stored ``raw`` parses to. Every submit reads its workflow:
        the definition parsed last is kept per key and, while the stored bytes are the
        same, given again instead of parsing them again. Nobody changes a kept one
        (``get_workflow`` hands out copies)."""
        if raw is None:
            raise NotFoundError(f"workflow {workflow_id!r} not found")
        parsed = self._parsed_workflows
        last = parsed.get(key)
        if last is not None and last[0] == raw:
            return last[1]
        wf = self._workflow(key, raw)
        if len(parsed) >= PARSED_WORKFLOWS_KEPT:
            parsed.pop(next(iter(parsed)))
        parsed[key] = (bytes(raw), wf)
        return wf

    async def delete_workflow(self, workflow_id: str) -> None:
        """Remove the definition and its index entries (its runs are kept)."""
        key = workflow_key(workflow_id)

        async def txn(pipe: Any) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFoundError(f"workflow {workflow_id!r} not found")
            org_id = ""
            try:
                org_id = str(loads(raw, key).get("org_id") or "")
            except (RedisDataError, AttributeError) as exc:
                log.warning("workflow %r: deleting a corrupt entry: %s", workflow_id, exc)
            pipe.multi()
            pipe.delete(key)
            pipe.zrem(WF_INDEX_ALL, workflow_id)
            if org_id:
                pipe.zrem(workflow_org_index(org_id), workflow_id)
            await pipe.execute()

        await self._redis.transaction("delete workflow", key, [key], txn)

    async def list_workflows(
        self, org_id: str = "", limit: int = DEFAULT_WORKFLOW_LIMIT
    ) -> list[Workflow]:
        """Workflows of ``org_id`` (all workflows when empty), most recently saved first."""
        limit = limit if limit > 0 else DEFAULT_WORKFLOW_LIMIT
        index = workflow_org_index(org_id) if org_id else WF_INDEX_ALL
        ids = [text(x) for x in
               await self._redis.call("list workflows", index, "zrevrange", index, 0, limit - 1)]
        if not ids:
            return []
        keys = [workflow_key(wid) for wid in ids]
        raws = await self._redis.call("list workflows", index, "mget", keys)
        out: list[Workflow] = []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                out.append(self._workflow(key, raw))
            except RedisDataError as exc:  # listing skips corrupt entries (SPEC §11)
                log.warning("corrupt workflow skipped: %s", exc)
        return out

    @staticmethod
    def _workflow(key: str, raw: bytes) -> Workflow:
        doc = loads(raw, key)
        try:
            return Workflow.from_dict(doc, strict=False)  # stored data: tolerate unknown keys
        except ValidationError as exc:
            raise RedisDataError(f"redis key {key!r}: corrupt workflow: {exc}") from None
