"""Hypothesis strategies for cordtrio workflow definitions and run inputs (needs
``hypothesis``; install ``cordtrio[test]``).

These strategies generate *valid* workflows (every one passes ``validate_workflow``), so a
property test can drive the engine or the pure core (``cordtrio.core.machine.decide``) with
arbitrary but legal definitions and look only for engine bugs, never for input errors.

``workflows()``
    Random DAGs of 1–8 steps. Dependencies only point at steps generated earlier, so the
    graph is acyclic by construction; the definition order is shuffled half of the time, so
    definition order (which the ready pass walks) is not always a topological order.
    Step kinds: plain workers, workers gated by ``condition: "input.flag"``, ``condition``
    steps, ``approval``, ``delay``, ``notify`` and ``for_each`` fan-outs over
    ``input.items``. Worker-like steps get random retry settings and step timeouts; some
    steps name a later step as their ``on_error`` handler; some workflows have a
    ``timeout_sec``.

``run_inputs()``
    ``{"items": [0–6 ints], "flag": bool}``: the input every generated expression reads.

Everything shrinks towards the simplest case: one plain worker step, no retries, no
timeouts, no handlers, definition order = generation order, empty ``items``.

For seeded simulations without Hypothesis, ``cordtrio.testing.random_workflow`` draws the
same kinds of workflows from a ``random.Random``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from ..model import RetryConfig, Step, StepType, Workflow
from .generate import (
    CONDITION_EXPRESSIONS,
    DEFAULT_KINDS,
    FOR_EACH_EXPRESSION,
    GATE_EXPRESSION,
    STEP_KINDS,
    WORKER_TOPIC,
    check_kinds,
    finish_workflow,
    worker_input,
)

__all__ = [
    "CONDITION_EXPRESSIONS",
    "DEFAULT_KINDS",
    "FOR_EACH_EXPRESSION",
    "GATE_EXPRESSION",
    "STEP_KINDS",
    "WORKER_TOPIC",
    "retry_configs",
    "run_inputs",
    "step_timeouts",
    "workflows",
]


def run_inputs(*, max_items: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    """Run inputs ``{"items": list of 0..max_items ints, "flag": bool}``.

    ``items`` feeds ``for_each`` fan-outs and ``length(input.items) > 1``; ``flag`` feeds
    the ``input.flag`` gates.
    """
    return st.fixed_dictionaries(
        {
            "items": st.lists(st.integers(min_value=-100, max_value=100), max_size=max_items),
            "flag": st.booleans(),
        }
    )


def retry_configs() -> st.SearchStrategy[RetryConfig | None]:
    """No retry block, or ``max_retries`` 0–3, ``initial_backoff_sec`` 0–5 (sometimes a
    fraction), ``multiplier`` 0–3 and ``max_backoff_sec`` 0 (uncapped) or 1–10."""
    return st.none() | st.builds(
        RetryConfig,
        max_retries=st.integers(min_value=0, max_value=3),
        initial_backoff_sec=st.integers(min_value=0, max_value=5) | st.just(0.5),
        max_backoff_sec=st.just(0) | st.integers(min_value=1, max_value=10),
        multiplier=st.integers(min_value=0, max_value=3),
    )


def step_timeouts() -> st.SearchStrategy[int]:
    """A step ``timeout_sec``: 0 (none) or 1–60 seconds."""
    return st.just(0) | st.integers(min_value=1, max_value=60)


def _make_step(draw: st.DrawFn, sid: str, kind: str, depends_on: list[str]) -> Step:
    step = Step(id=sid, depends_on=depends_on)
    if kind in ("worker", "gated", "for_each"):
        step.type = StepType.WORKER
        step.topic = WORKER_TOPIC
        step.retry = draw(retry_configs())
        step.timeout_sec = draw(step_timeouts())
        step.input = worker_input(draw(st.integers(min_value=0, max_value=2)),
                                  fan_out=kind == "for_each")
        if kind == "gated":
            step.condition = GATE_EXPRESSION
        if kind == "for_each":
            step.for_each = FOR_EACH_EXPRESSION
            step.max_parallel = draw(st.integers(min_value=0, max_value=3))
    elif kind == "condition":
        step.type = StepType.CONDITION
        step.condition = draw(st.sampled_from(CONDITION_EXPRESSIONS))
    elif kind == "approval":
        step.type = StepType.APPROVAL
    elif kind == "delay":
        step.type = StepType.DELAY
        step.delay_sec = draw(st.integers(min_value=0, max_value=120))
        step.timeout_sec = draw(step_timeouts())  # the duration when delay_sec is 0
    elif kind == "notify":
        step.type = StepType.NOTIFY
        step.input = {"message": "step ${input.flag}", "level": "warn", "code": "N1"}
    else:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {STEP_KINDS}")
    return step


@st.composite
def workflows(
    draw: st.DrawFn,
    *,
    min_steps: int = 1,
    max_steps: int = 8,
    kinds: Sequence[str] = DEFAULT_KINDS,
    handlers: bool = True,
    run_timeout: bool = True,
    shuffle: bool = True,
    workflow_id: str = "wf-prop",
) -> Workflow:
    """A valid workflow: a random DAG of ``min_steps``..``max_steps`` steps of ``kinds``
    (names from ``STEP_KINDS``; repeat one to make it more likely).

    Steps are generated as ``s0, s1, ...``; step ``sI`` depends on up to three of
    ``s0..s(I-1)``. With ``handlers``, some steps name a *later* step in ``on_error``; no
    step depends on a handler (validation rejects that: a handler runs only after a
    failure, so its dependents could never start in a run where nothing fails). With
    ``run_timeout``, the workflow sometimes has a ``timeout_sec`` of
    30–600 s. With ``shuffle``, the definition order is a random permutation half of the
    time.
    """
    try:
        check_kinds(kinds)
    except ValueError as exc:
        raise ValueError(f"workflows(): {exc}") from None
    n = draw(st.integers(min_value=min_steps, max_value=max_steps))
    ids = [f"s{i}" for i in range(n)]

    on_error: dict[str, str] = {}
    if handlers:
        for i in range(n - 1):
            if draw(st.integers(min_value=0, max_value=2)) == 2:
                on_error[ids[i]] = ids[draw(st.integers(min_value=i + 1, max_value=n - 1))]
    handler_ids = set(on_error.values())

    steps: list[Step] = []
    for i, sid in enumerate(ids):
        kind = draw(st.sampled_from(tuple(kinds)))
        candidates = [d for d in ids[:i] if d not in handler_ids]
        deps = (
            draw(st.lists(st.sampled_from(candidates), unique=True, max_size=3))
            if candidates else []
        )
        step = _make_step(draw, sid, kind, deps)
        step.on_error = on_error.get(sid, "")
        steps.append(step)

    if shuffle and n > 1 and draw(st.booleans()):
        steps = list(draw(st.permutations(steps)))

    timeout = 0
    if run_timeout and draw(st.integers(min_value=0, max_value=4)) == 4:
        timeout = draw(st.integers(min_value=30, max_value=600))
    return finish_workflow(steps, timeout, workflow_id)
