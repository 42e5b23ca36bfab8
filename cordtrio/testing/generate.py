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
from typing import Any, Protocol

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


class Draws(Protocol):
    """The choices a workflow generator makes, whatever draws them: a seeded
    ``random.Random`` (``RandomDraws``, for simulations) or Hypothesis
    (``cordtrio.testing.strategies``, which shrinks). ``build_workflow`` and ``build_step``
    are written once against this, so both generators make the same kinds of workflows."""

    def integer(self, lo: int, hi: int) -> int: ...
    def pick(self, options: Sequence[str]) -> str: ...
    def retry(self) -> RetryConfig | None: ...
    def job_timeout(self) -> int: ...
    def delay_timeout(self) -> int: ...
    def dependencies(self, candidates: list[str]) -> list[str]: ...
    def shuffled(self, steps: list[Step]) -> list[Step]: ...


class RandomDraws:
    """``Draws`` from a ``random.Random``. The sequence of ``rng`` calls is part of the
    contract: a seed keeps naming the same workflow (seeds are how simulation failures are
    reported and replayed)."""

    def __init__(self, rng: random.Random, *, require_timeouts: bool = True) -> None:
        self.rng = rng
        self.require_timeouts = require_timeouts

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[str]) -> str:
        return self.rng.choice(options)

    def retry(self) -> RetryConfig | None:
        rng = self.rng
        if rng.random() < 0.3:
            return None
        return RetryConfig(
            max_retries=rng.randint(0, 3),
            initial_backoff_sec=rng.choice((0, 1, 2, 3, 4, 5, 0.5)),
            max_backoff_sec=rng.choice((0, *range(1, 11))),
            multiplier=rng.randint(0, 3),
        )

    def job_timeout(self) -> int:
        if self.require_timeouts or self.rng.random() < 0.5:
            return self.rng.randint(1, 60)
        return 0

    def delay_timeout(self) -> int:
        return self.rng.randint(1, 60) if self.rng.random() < 0.5 else 0

    def dependencies(self, candidates: list[str]) -> list[str]:
        return self.rng.sample(candidates, self.rng.randint(0, min(3, len(candidates))))

    def shuffled(self, steps: list[Step]) -> list[Step]:
        if len(steps) > 1 and self.rng.random() < 0.5:
            self.rng.shuffle(steps)
        return steps


def build_step(draw: Draws, sid: str, kind: str, depends_on: list[str]) -> Step:
    """One generated step of ``kind`` (a name from ``STEP_KINDS``)."""
    step = Step(id=sid, depends_on=depends_on)
    if kind in ("worker", "gated", "for_each"):
        step.type = StepType.WORKER
        step.topic = WORKER_TOPIC
        step.retry = draw.retry()
        step.timeout_sec = draw.job_timeout()
        step.input = worker_input(draw.integer(0, 2), fan_out=kind == "for_each")
        if kind == "gated":
            step.condition = GATE_EXPRESSION
        if kind == "for_each":
            step.for_each = FOR_EACH_EXPRESSION
            step.max_parallel = draw.integer(0, 3)
    elif kind == "condition":
        step.type = StepType.CONDITION
        step.condition = draw.pick(CONDITION_EXPRESSIONS)
    elif kind == "approval":
        step.type = StepType.APPROVAL
    elif kind == "delay":
        step.type = StepType.DELAY
        step.delay_sec = draw.integer(0, 120)
        step.timeout_sec = draw.delay_timeout()  # the duration when delay_sec is 0
    elif kind == "notify":
        step.type = StepType.NOTIFY
        step.input = {"message": "step ${input.flag}", "level": "warn", "code": "N1"}
    else:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {STEP_KINDS}")
    return step


def build_workflow(draw: Draws, *, min_steps: int, max_steps: int, kinds: Sequence[str],
                   handlers: bool, run_timeout: bool, shuffle: bool,
                   workflow_id: str) -> Workflow:
    """A valid workflow of ``min_steps``..``max_steps`` steps of ``kinds``.

    Step ``sI`` depends on up to three of ``s0..s(I-1)`` (acyclic by construction); with
    ``handlers`` some steps name a *later* step in ``on_error`` and no step depends on a
    handler (validation rejects that: a handler runs only after a failure, so its
    dependents could never start in a run where nothing fails); with ``run_timeout`` a
    fifth of the workflows get a ``timeout_sec`` of 30–600 s; with ``shuffle`` the
    definition order is a random permutation half of the time.
    """
    check_kinds(kinds)
    n = draw.integer(min_steps, max_steps)
    ids = [f"s{i}" for i in range(n)]
    on_error: dict[str, str] = {}
    if handlers:
        for i in range(n - 1):
            if draw.integer(0, 2) == 2:
                on_error[ids[i]] = ids[draw.integer(i + 1, n - 1)]
    handler_ids = set(on_error.values())
    steps: list[Step] = []
    for i, sid in enumerate(ids):
        kind = draw.pick(tuple(kinds))
        candidates = [d for d in ids[:i] if d not in handler_ids]
        step = build_step(draw, sid, kind, draw.dependencies(candidates))
        step.on_error = on_error.get(sid, "")
        steps.append(step)
    if shuffle:
        steps = draw.shuffled(steps)
    timeout = draw.integer(30, 600) if run_timeout and draw.integer(0, 4) == 4 else 0
    return finish_workflow(steps, timeout, workflow_id)


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
    """A valid random workflow (see the module docstring and ``build_workflow``), drawn
    from ``rng`` only. ``require_timeouts`` gives every job step a ``timeout_sec`` (1–60 s):
    without one, a lost message (a dropped packet, a hung or crashed worker) leaves its
    step running forever, by design."""
    return build_workflow(RandomDraws(rng, require_timeouts=require_timeouts),
                          min_steps=min_steps, max_steps=max_steps, kinds=kinds,
                          handlers=handlers, run_timeout=run_timeout, shuffle=shuffle,
                          workflow_id=workflow_id)
