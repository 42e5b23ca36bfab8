"""Creating runs and checking commands before they are queued — shared by ``Engine`` and the
store-only ``Client``, so both accept and refuse exactly the same things."""

from __future__ import annotations

import copy
import operator
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..core.commands import rerun_from as core_rerun_from
from ..errors import InvalidStateError, NotFoundError, ValidationError
from ..model import RunStatus, StepStatus, Workflow, WorkflowRun
from ..ports import Clock, Store
from ..schemas import validate_value
from ..validation import collect_dependencies


def random_run_id() -> str:
    """A new run id: ``str(uuid.uuid4())``'s text (RFC 4122 version 4, the same random
    bits), written straight from 16 random bytes. Building the ``UUID`` object and its text
    cost twice as much, once per run (tests/engine/test_engine_submit_and_persist.py checks
    the two agree)."""
    return uuid4_text(os.urandom(16))


def random_write_token() -> str:
    """A token for the write that creates a run (``RunChanges.created``): 16 random hex
    digits, unique to the write."""
    return os.urandom(8).hex()


_PARTS = operator.itemgetter(slice(0, 8), slice(8, 12), slice(13, 16), 16, slice(17, 20),
                             slice(20, 32))
"""The groups of a UUID's 32 hex digits (less the version digit), and its variant digit."""

_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""A variant digit with its two top bits set to ``10``."""


def uuid4_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw, version=4))`` for 16 bytes ``raw``: the version digit set
    to 4, the variant's two top bits to ``10`` (one C call cuts the digits apart)."""
    a, b, c, variant, d, e = _PARTS(raw.hex())
    return f"{a}-{b}-4{c}-{_VARIANT[variant]}{d}-{e}"


@dataclass(slots=True)
class Submitted:
    """What ``submit_run`` did: the run's id, whether it needs a ``Start``, and what it read
    and wrote on the way — the workflow, and the run when this call created it — so the
    engine's run task need not read them back (``RunTask``'s ``preload``). The workflow may
    be the store's own (``ports.SharedWorkflows``): read it, never change it. ``creating``
    (non-empty: the token of the write that is to create it): the run was built, not
    written (``submit_run``'s ``deferred``)."""

    run_id: str
    needs_start: bool
    workflow: Workflow
    created: WorkflowRun | None = None
    creating: str = ""


async def submit_run(
    store: Store,
    clock: Clock,
    new_id: Callable[[], str],
    workflow_id: str,
    input: dict[str, Any] | None,
    *,
    org_id: str | None,
    team_id: str | None,
    idempotency_key: str | None,
    labels: dict[str, str] | None,
    dry_run: bool,
    triggered_by: str,
    create: Callable[[WorkflowRun], Awaitable[None]] | None = None,
    deferred: bool = False,
) -> Submitted:
    """Validate ``input`` against the workflow's ``input_schema`` and create the pending run.

    Returns the run id and whether it needs starting (``Submitted``). With an
    ``idempotency_key`` already used, nothing is created: the earlier run's id is returned,
    with ``needs_start`` only when that run was never started (an earlier submit was
    interrupted before starting it). A key naming a run that does not exist (an earlier
    submit claimed the key, then failed to create the run and to release the key — a crash,
    the store gone) is honoured: the run is created under that id now, so the key never
    points at nothing. ``create`` creates the run (default ``store.create_run``; the engine
    passes its ownership's, which may take the run's lease with it).

    ``deferred`` (without an ``idempotency_key`` only: with one, the key's claim needs the
    run written): the run is built and checked but not written; the caller's first write of
    it creates it (``Submitted.creating``, its token: ``RunChanges.created``)."""
    # read-only here and in the run task (its plan): a store that can lend its definition
    # (``SharedWorkflows``) need not copy it for every run
    # (``getattr``: a runtime protocol's ``isinstance`` costs more than the copy saved)
    shared = getattr(store, "get_workflow_shared", None)
    workflow: Workflow = await (shared(workflow_id) if shared is not None
                                else store.get_workflow(workflow_id))
    payload = copy.deepcopy(input) if input is not None else {}
    if not isinstance(payload, dict):
        raise ValidationError(f"workflow '{workflow_id}' input: must be an object")
    if workflow.input_schema:
        validate_value(workflow.input_schema, payload, where=f"workflow '{workflow_id}' input")
    claimed = ""  # a run id the key already names, whose run was never created
    if idempotency_key:
        existing = await store.get_run_by_idempotency_key(idempotency_key)
        if existing:
            if await _exists(store, existing):
                return Submitted(existing, await _never_started(store, existing), workflow)
            claimed = existing
    now = clock.now()
    run = WorkflowRun(
        id=claimed or new_id(),
        workflow_id=workflow_id,
        org_id=workflow.org_id if org_id is None else org_id,
        team_id=workflow.team_id if team_id is None else team_id,
        input=payload,
        status=RunStatus.PENDING,
        triggered_by=triggered_by,
        created_at=now,
        updated_at=now,
        labels=dict(labels or {}),
        metadata={"dry_run": "true"} if dry_run else {},
        idempotency_key=idempotency_key or "",
        dry_run=dry_run,
    )
    if dry_run:
        run.labels["dry_run"] = "true"
    if deferred and not idempotency_key:
        return Submitted(run.id, True, workflow, run, creating=random_write_token())
    if idempotency_key and not claimed and not await store.try_set_run_idempotency_key(
            idempotency_key, run.id):
        existing = await store.get_run_by_idempotency_key(idempotency_key)
        if existing:
            return Submitted(existing, await _never_started(store, existing), workflow)
    try:
        await (create or store.create_run)(run)
    except InvalidStateError:
        if not claimed:
            raise
        # a concurrent submit with the same key created the claimed run first
        return Submitted(claimed, await _never_started(store, claimed), workflow)
    except BaseException:
        if idempotency_key and not claimed:
            with trio.CancelScope(shield=True):
                await store.delete_run_idempotency_key(idempotency_key)
        raise
    return Submitted(run.id, True, workflow, run)


async def _exists(store: Store, run_id: str) -> bool:
    try:
        await store.get_run(run_id)
    except NotFoundError:
        return False
    return True


async def _never_started(store: Store, run_id: str) -> bool:
    try:
        run = await store.get_run(run_id)
    except NotFoundError:
        return False  # the key outlived its run: nothing to start
    return run.status == RunStatus.PENDING and run.started_at is None


async def create_rerun(
    store: Store, clock: Clock, new_id: Callable[[], str], run_id: str, step_id: str,
    dry_run: bool,
) -> str:
    """Create (not start) a new run from ``run_id`` (SPEC §9); return its id."""
    old = await store.get_run(run_id)
    workflow = await store.get_workflow(old.workflow_id)
    deps: set[str] = set()
    if step_id:
        if step_id not in workflow.steps:
            raise NotFoundError(f"run {run_id}: step '{step_id}' not found")
        deps = collect_dependencies(workflow, step_id)
    new = core_rerun_from(workflow, old, step_id, dry_run, new_id(), clock.now(), deps)
    await store.create_run(new)
    return new.id


async def check_approvable(store: Store, run_id: str, step_id: str) -> None:
    """The errors ``approve_step`` gives at once when the command is queued for another
    engine: an unknown run or step (``NotFoundError``), a step not waiting
    (``InvalidStateError``) — the same messages the core gives."""
    run = await store.get_run(run_id)
    workflow = await store.get_workflow(run.workflow_id)
    if step_id not in workflow.steps:
        raise NotFoundError(f"run {run.id}: step '{step_id}' not found")
    sr = run.steps.get(step_id)
    if sr is None or sr.status != StepStatus.WAITING:
        state = sr.status.value if sr is not None else "not started"
        raise InvalidStateError(f"run {run.id}: step '{step_id}' not waiting ({state})")
