"""For-each steps (SPEC §4): children created up front, dispatched in index order, never
more than ``max_parallel`` running at once (counting retries)."""

from __future__ import annotations

import heapq

from ..errors import ExpressionError
from ..expr import evaluate
from ..model import Step, StepRun, StepStatus
from .dispatch import dispatch, type_name
from .finish import finish
from .scope import build_scope
from .state import FanoutIndex, Tx, child_id

_RUNNING = StepStatus.RUNNING  # read per child dispatched: a module constant (see ready.py)


def start_fanout(tx: Tx, step: Step, sr: StepRun | None) -> None:
    """Evaluate ``for_each`` and create the children, then dispatch the first ones."""
    run = tx.run
    if sr is None:
        sr = StepRun(step_id=step.id)
        run.steps[step.id] = sr
    try:
        items = evaluate(step.for_each, build_scope(tx.plan, run, step.id))
    except ExpressionError as exc:
        finish(tx, step.id, sr, StepStatus.FAILED, message=f"for_each: {exc}")
        return
    if items is None:
        items = []
    if not isinstance(items, (list, tuple)):
        finish(tx, step.id, sr, StepStatus.FAILED,
               message=f"for_each expression must return array, got {type_name(items)}")
        return
    if not items:
        sr.started_at = tx.now
        finish(tx, step.id, sr, StepStatus.SUCCEEDED)
        return
    sr.status = StepStatus.RUNNING
    sr.started_at = tx.now
    sr.children = {
        child_id(step.id, i): StepRun(step_id=child_id(step.id, i), item=item)
        for i, item in enumerate(items)
    }
    tx.touch_step(step.id)
    tx.changes.children.setdefault(step.id, set()).update(sr.children)
    tx.state.fanouts[step.id] = FanoutIndex(total=len(items))
    pump_fanout(tx, step, sr)


def pump_fanout(tx: Tx, step: Step, parent: StepRun) -> None:
    """Dispatch pending children, lowest index first, while below ``max_parallel``."""
    idx = tx.state.fanout(step.id, tx.now)
    if idx.backoff:
        for i in [i for i in idx.backoff if _due(tx, parent, step.id, i)]:
            idx.backoff.discard(i)
            heapq.heappush(idx.ready, i)
    limit = step.max_parallel if step.max_parallel > 0 else idx.total
    while idx.running < limit and parent.status == _RUNNING:
        nxt = idx.pop_next()
        if nxt is None:
            return
        child = parent.children[child_id(step.id, nxt)]
        if dispatch(tx, step, child, parent=step.id, index=nxt):
            idx.running += 1


def _due(tx: Tx, parent: StepRun, step_id: str, i: int) -> bool:
    at = parent.children[child_id(step_id, i)].next_attempt_at
    return at is None or at <= tx.now
