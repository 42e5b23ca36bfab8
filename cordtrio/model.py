"""The documents cordtrio stores and exchanges: workflows, runs, step runs, timeline events.

This module is the stable import path for all of them. The definitions live by
responsibility in ``workflow_doc`` (Workflow, Step, RetryConfig, StepMeta, StepType,
load_workflow) and ``run_doc`` (WorkflowRun, StepRun, TimelineEvent, RunStatus, StepStatus);
field helpers are in ``fields``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .fields import json_copy as json_copy  # stores import it from here
from .run_doc import _TERMINAL_RUN as _TERMINAL_RUN
from .run_doc import _TERMINAL_STEP as _TERMINAL_STEP
from .run_doc import (
    TERMINAL_RUN_STATUSES,
    TERMINAL_STEP_STATUSES,
    RunStatus,
    StepRun,
    StepStatus,
    TimelineEvent,
    WorkflowRun,
)
from .workflow_doc import _ENGINE_TYPES as _ENGINE_TYPES
from .workflow_doc import (
    RetryConfig,
    Step,
    StepMeta,
    StepType,
    Workflow,
    load_workflow,
)
from .workflow_doc import _load_yaml as _load_yaml

NO_DATA: Any = MappingProxyType({})
"""The ``data`` of a ``TimelineEvent`` without any, as the engine's core makes it and the
memory store keeps it: one shared read-only empty map, so that the two or three rows of every
step need no map of their own (nor a store a pass to drop theirs). Falsy like ``{}``: every
reader copies ``data`` only when it is not empty (``to_dict``, the stores' encoders and
reads), so no store or API reader is ever handed this map; and read-only, so nobody holding
a row can change another's."""

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "RetryConfig",
    "RunStatus",
    "Step",
    "StepMeta",
    "StepRun",
    "StepStatus",
    "StepType",
    "TimelineEvent",
    "Workflow",
    "WorkflowRun",
    "load_workflow",
]
