"""Workflows compiled for execution (``core.plan.Plan``), with the schemas their steps name
in the registry resolved, cached per workflow version: what a run task drives its run by
(``host.RunHost.plan_for``)."""

from __future__ import annotations

from typing import Any

from ..core.plan import Plan
from ..errors import NotFoundError
from ..model import Workflow
from ..ports import SchemaRegistry, Store
from ..retry import retrying

PLANS_KEPT = 1024
"""Plans an engine keeps; past that the cache starts again empty."""


class PlanCache:
    """The plans of one engine, keyed by workflow id and version (``updated_at``).

    ``has_payload_store``, ``starts_reported`` and ``resend_after`` are the engine's and go
    into every plan (``Plan.build``)."""

    __slots__ = ("_has_payload_store", "_plans", "_resend_after", "_schemas",
                 "_starts_reported", "_store")

    def __init__(self, store: Store, schemas: SchemaRegistry | None, *,
                 has_payload_store: bool, starts_reported: bool,
                 resend_after: float) -> None:
        self._store = store
        self._schemas = schemas
        self._has_payload_store = has_payload_store
        self._starts_reported = starts_reported
        self._resend_after = resend_after
        self._plans: dict[tuple[str, Any], Plan] = {}

    async def plan_for(self, workflow_id: str, workflow: Workflow | None = None) -> Plan:
        """The workflow compiled for execution, with its registry schemas resolved;
        cached per workflow version (``updated_at``). ``workflow``: the definition the
        caller just read (``submit``), used instead of reading it again."""
        if workflow is None or workflow.id != workflow_id:
            workflow = await retrying(lambda: self._store.get_workflow(workflow_id),
                                      f"load workflow {workflow_id}")
        key = (workflow.id, workflow.updated_at)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        probe = Plan.build(workflow)
        resolved: dict[str, dict[str, Any] | None] | None = None
        if self._schemas is not None:
            resolved = {}
            for schema_id in sorted(probe.schema_ids()):
                try:
                    resolved[schema_id] = await self._schemas.get(schema_id)
                except NotFoundError:
                    resolved[schema_id] = None
        plan = Plan.build(workflow, schemas=resolved, has_payload_store=self._has_payload_store,
                          starts_reported=self._starts_reported,
                          resend_after=self._resend_after)
        if len(self._plans) > PLANS_KEPT:
            self._plans.clear()
        self._plans[key] = plan
        return plan


__all__ = ["PLANS_KEPT", "PlanCache"]
