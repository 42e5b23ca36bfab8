"""Hypothesis strategies for cordtrio workflows: re-exported from the public
``cordtrio.testing.strategies`` (kept here so existing ``from strategies import ...`` works)."""

from __future__ import annotations

from cordtrio.testing.strategies import (
    CONDITION_EXPRESSIONS,
    DEFAULT_KINDS,
    FOR_EACH_EXPRESSION,
    GATE_EXPRESSION,
    STEP_KINDS,
    WORKER_TOPIC,
    retry_configs,
    run_inputs,
    step_timeouts,
    workflows,
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
