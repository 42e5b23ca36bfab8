"""The documents cordtrio stores and exchanges: workflows, runs, step runs, timeline events.

This module is the stable import path for all of them. The definitions live by
responsibility in ``workflow_doc`` (Workflow, Step, RetryConfig, StepMeta, StepType,
load_workflow) and ``run_doc`` (WorkflowRun, StepRun, TimelineEvent, RunStatus, StepStatus);
field helpers are in ``fields``.
"""

from __future__ import annotations

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
