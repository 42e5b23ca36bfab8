"""Random valid workflows from a plain seeded ``random.Random`` (for simulations).

``random_workflow(rng)`` produces the same kinds of workflows as the Hypothesis strategy
``cordtrio.testing.strategies.workflows()``: random DAGs of plain workers, gated workers,
``condition`` steps, approvals, delays, notifies and ``for_each`` fan-outs, with random
retries, step timeouts, ``on_error`` handlers and workflow timeouts. Every result passes
``validate_workflow``. ``random_run_input(rng)`` is an input every generated expression
reads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..model import RetryConfig, Step, StepType, Workflow
from ..validation import validate_workflow

__all__ = [
    "CONDITION_EXPRESSIONS",
    "DEFAULT_KINDS",
    "FOR_EACH_EXPRESSION",
    "GATE_EXPRESSION",
    "STEP_KINDS",
    "WORKER_TOPIC",
    "random_run_input",
    "random_workflow",
]

WORKER_TOPIC = "job.t"
"""The topic of every generated worker-like step."""

STEP_KINDS: tuple[str, ...] = (
    "worker", "gated", "condition", "approval", "delay", "notify", "for_each",
)
"""Kinds generators understand. ``gated`` is a worker step with ``condition:
"input.flag"``; ``for_each`` is a worker step fanned out over ``input.items``."""

DEFAULT_KINDS: tuple[str, ...] = (
    "worker", "for_each", "gated", "worker", "condition", "approval", "for_each", "delay",
    "notify", "worker",
)
"""The default mix: every kind, with jobs (``worker``, ``for_each``) more likely. A kind
repeated in ``kinds`` is drawn proportionally more often."""

CONDITION_EXPRESSIONS: tuple[str, ...] = ("true", "false", "length(input.items) > 1")
"""Expressions of generated ``condition`` steps (all read only run-input fields)."""

GATE_EXPRESSION = "input.flag"
"""The ``condition`` gate of ``gated`` worker steps."""

FOR_EACH_EXPRESSION = "input.items"
"""The ``for_each`` expression of fan-out steps."""


def check_kinds(kinds: Sequence[str]) -> None:
    if not kinds:
        raise ValueError("kinds must not be empty")
    unknown = sorted(set(kinds) - set(STEP_KINDS))
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; expected some of {STEP_KINDS}")


def worker_input(choice: int, *, fan_out: bool) -> dict[str, Any]:
    """Input of a generated worker step: 0 → empty (the job gets the run's input),
    1 → a small templated body, 2 → that plus ``${error.message}``."""
    if choice == 0:
        return {}
    body: dict[str, Any] = {"count": "${length(input.items)}", "note": "flag=${input.flag}"}
    if fan_out:
        body["value"] = "${item}"
    if choice == 2:
        body["why"] = "${error.message}"  # set only in a triggered on_error handler
    return body


def finish_workflow(steps: list[Step], timeout: int, workflow_id: str) -> Workflow:
    wf = Workflow(
        id=workflow_id,
        org_id="org-1",
        team_id="team-1",
        name="generated",
        timeout_sec=timeout,
        steps={s.id: s for s in steps},
    )
    validate_workflow(wf)  # by construction; a failure here is a bug in the generator
    return wf


def random_run_input(rng: random.Random, *, max_items: int = 6) -> dict[str, Any]:
    """``{"items": 0..max_items ints in [-100, 100], "flag": bool}``."""
    n = rng.randint(0, max_items)
    return {"items": [rng.randint(-100, 100) for _ in range(n)], "flag": rng.random() < 0.5}


def _retry(rng: random.Random) -> RetryConfig | None:
    if rng.random() < 0.3:
        return None
    return RetryConfig(
        max_retries=rng.randint(0, 3),
        initial_backoff_sec=rng.choice((0, 1, 2, 3, 4, 5, 0.5)),
        max_backoff_sec=rng.choice((0, *range(1, 11))),
        multiplier=rng.randint(0, 3),
    )


def _make_step(rng: random.Random, sid: str, kind: str, depends_on: list[str],
               require_timeouts: bool) -> Step:
    step = Step(id=sid, depends_on=depends_on)
    if kind in ("worker", "gated", "for_each"):
        step.type = StepType.WORKER
        step.topic = WORKER_TOPIC
        step.retry = _retry(rng)
        if require_timeouts or rng.random() < 0.5:
            step.timeout_sec = rng.randint(1, 60)
        step.input = worker_input(rng.randint(0, 2), fan_out=kind == "for_each")
        if kind == "gated":
            step.condition = GATE_EXPRESSION
        if kind == "for_each":
            step.for_each = FOR_EACH_EXPRESSION
            step.max_parallel = rng.randint(0, 3)
    elif kind == "condition":
        step.type = StepType.CONDITION
        step.condition = rng.choice(CONDITION_EXPRESSIONS)
    elif kind == "approval":
        step.type = StepType.APPROVAL
    elif kind == "delay":
        step.type = StepType.DELAY
        step.delay_sec = rng.randint(0, 120)
        step.timeout_sec = rng.randint(1, 60) if rng.random() < 0.5 else 0
    elif kind == "notify":
        step.type = StepType.NOTIFY
        step.input = {"message": "step ${input.flag}", "level": "warn", "code": "N1"}
    else:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {STEP_KINDS}")
    return step


def random_workflow(
    rng: random.Random,
    *,
    min_steps: int = 1,
    max_steps: int = 8,
    kinds: Sequence[str] = DEFAULT_KINDS,
    handlers: bool = True,
    run_timeout: bool = True,
    shuffle: bool = True,
    require_timeouts: bool = True,
    workflow_id: str = "wf-sim",
) -> Workflow:
    """A valid random workflow (see the module docstring), drawn from ``rng`` only.

    Step ``sI`` depends on up to three of ``s0..s(I-1)``; with ``handlers`` some steps name
    a later step in ``on_error`` (no step depends on a handler); with ``run_timeout`` a
    fifth of the workflows get a ``timeout_sec`` of 30–600 s; with ``shuffle`` the
    definition order is a random permutation half of the time. ``require_timeouts`` gives
    every job step a ``timeout_sec`` (1–60 s): without one, a lost message (a dropped
    packet, a hung or crashed worker) leaves its step running forever, by design.
    """
    check_kinds(kinds)
    n = rng.randint(min_steps, max_steps)
    ids = [f"s{i}" for i in range(n)]
    on_error: dict[str, str] = {}
    if handlers:
        for i in range(n - 1):
            if rng.randint(0, 2) == 2:
                on_error[ids[i]] = ids[rng.randint(i + 1, n - 1)]
    handler_ids = set(on_error.values())
    steps: list[Step] = []
    for i, sid in enumerate(ids):
        kind = rng.choice(tuple(kinds))
        candidates = [d for d in ids[:i] if d not in handler_ids]
        deps = rng.sample(candidates, rng.randint(0, min(3, len(candidates))))
        step = _make_step(rng, sid, kind, deps, require_timeouts)
        step.on_error = on_error.get(sid, "")
        steps.append(step)
    if shuffle and n > 1 and rng.random() < 0.5:
        rng.shuffle(steps)
    timeout = rng.randint(30, 600) if run_timeout and rng.randint(0, 4) == 4 else 0
    return finish_workflow(steps, timeout, workflow_id)
