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

from ..model import RetryConfig, Step, Workflow
from .generate import (
    CONDITION_EXPRESSIONS,
    DEFAULT_KINDS,
    FOR_EACH_EXPRESSION,
    GATE_EXPRESSION,
    STEP_KINDS,
    WORKER_TOPIC,
    build_workflow,
    check_kinds,
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


class _HypothesisDraws:
    """``Draws`` from Hypothesis: every choice shrinks towards the simplest case."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(min_value=lo, max_value=hi))

    def pick(self, options: Sequence[str]) -> str:
        return self.draw(st.sampled_from(options))

    def retry(self) -> RetryConfig | None:
        return self.draw(retry_configs())

    def job_timeout(self) -> int:
        return self.draw(step_timeouts())

    def delay_timeout(self) -> int:
        return self.draw(step_timeouts())

    def dependencies(self, candidates: list[str]) -> list[str]:
        if not candidates:
            return []
        return self.draw(st.lists(st.sampled_from(candidates), unique=True, max_size=3))

    def shuffled(self, steps: list[Step]) -> list[Step]:
        if len(steps) > 1 and self.draw(st.booleans()):
            return list(self.draw(st.permutations(steps)))
        return steps


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
    (names from ``STEP_KINDS``; repeat one to make it more likely). What each option
    does: ``cordtrio.testing.generate.build_workflow``, shared with the seeded generator.
    """
    try:
        check_kinds(kinds)
    except ValueError as exc:
        raise ValueError(f"workflows(): {exc}") from None
    return build_workflow(_HypothesisDraws(draw), min_steps=min_steps, max_steps=max_steps,
                          kinds=kinds, handlers=handlers, run_timeout=run_timeout,
                          shuffle=shuffle, workflow_id=workflow_id)
