"""The documents cordtrio stores and exchanges: workflows, runs, step runs, timeline events.

This module is the stable import path for all of them. The definitions live by
responsibility in ``workflow_doc`` (Workflow, Step, RetryConfig, StepMeta, StepType,
load_workflow) and ``run_doc`` (WorkflowRun, StepRun, TimelineEvent, RunStatus, StepStatus);
field helpers are in ``fields``.
"""

from __future__ import annotations

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


class _NoData(dict[str, Any]):
    """An empty map nobody can change: a ``dict`` to every reader (``isinstance``, ``json``,
    ``==``), whose mutators raise ``TypeError``; copied (``copy``, ``deepcopy``, ``pickle``),
    it is a plain ``{}``."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # a new one (``type(d)(...)``, as ``dataclasses.asdict`` makes its copies) is a
        # plain ``dict``: only ``NO_DATA`` itself is read-only
        return dict(*args, **kwargs)

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("a timeline event's shared empty data cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[()]]:
        return dict, ()

    def __copy__(self) -> dict[str, Any]:
        return {}

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {}


NO_DATA: dict[str, Any] = dict.__new__(_NoData)
"""The ``data`` of a ``TimelineEvent`` without any, as the engine's core makes it and the
memory store keeps it: one shared empty map, so that the two or three rows of every step
need no map of their own (nor a store a pass to drop theirs). A ``dict`` that cannot be
changed: a store or reader handed a row may read, encode, copy or pickle its data as any
empty ``dict`` (a copy is a plain ``{}``), and nobody holding a row can change another's."""

__all__ = [
    "NO_DATA",
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
