"""Everything ``cordtrio`` reads before it runs anything: the workflow file, the run input
and the handlers module. Problems become a ``CliError``: one line, an exit status, no
traceback."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CordtrioError
from ..model import Step, Workflow, load_workflow
from ..schemas import validate_value
from ..validation import validate_workflow
from ..worker import Handler

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_WAITING = 3
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem to report as ``cordtrio: error: <message>`` with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE, *, keep_lines: bool = False) -> None:
        super().__init__(str(message).rstrip() if keep_lines else one_line(message))
        self.code = code


def one_line(message: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def read_workflow(path: str) -> Workflow:
    """Load and validate a workflow definition (the checks ``save_workflow`` makes)."""
    try:
        workflow = load_workflow(path)
    except CordtrioError as exc:  # a syntax error shows the line and a caret below it
        raise CliError(str(exc), keep_lines=True) from None
    try:
        validate_workflow(workflow)
    except CordtrioError as exc:
        raise CliError(str(exc)) from None
    return workflow


def parse_input(text: str | None) -> dict[str, Any]:
    """``--input``: a JSON object, ``@file`` holding one, or ``@-`` for stdin."""
    if text is None:
        return {}
    where = "--input"
    if text.startswith("@"):
        name = text[1:]
        where = f"--input file {name!r}"
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def check_input(workflow: Workflow, value: dict[str, Any]) -> None:
    """Validate the run input against the workflow's ``input_schema`` before starting."""
    if not workflow.input_schema:
        return
    try:
        validate_value(workflow.input_schema, value, where=f"workflow {workflow.id!r} input")
    except CordtrioError as exc:
        raise CliError(str(exc)) from None


def load_handlers(spec: str) -> dict[str, Handler]:
    """``--handlers module[:attr]``: import ``module`` (from the current directory or
    ``PYTHONPATH``; a ``path/to/file.py`` works too) and return its ``HANDLERS`` mapping
    (or ``attr``, a dotted name) of topic -> async handler."""
    target, _, attr = spec.partition(":")
    target = target.strip()
    attr = attr.strip() or "HANDLERS"
    if not target:
        raise CliError(f"--handlers {spec!r}: expected module[:attr]")
    module = _import_file(target) if _looks_like_path(target) else _import_module(target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            hint = " (define HANDLERS = {topic: async handler}, or pass module:NAME)"
            raise CliError(f"handlers module {target!r} has no attribute {attr!r}"
                           + (hint if attr == "HANDLERS" else ""))
        obj = getattr(obj, part)
    if not isinstance(obj, Mapping):
        raise CliError(f"{target}:{attr} must be a mapping of topic -> async handler, "
                       f"got {type(obj).__name__}")
    handlers: dict[str, Handler] = {}
    for topic, handler in obj.items():
        if not isinstance(topic, str) or not topic:
            raise CliError(f"{target}:{attr}: topics must be non-empty strings, got {topic!r}")
        if not callable(handler):
            raise CliError(f"{target}:{attr}: the handler for topic {topic!r} is not callable")
        if inspect.isfunction(handler) and not inspect.iscoroutinefunction(handler):
            raise CliError(f"{target}:{attr}: the handler for topic {topic!r} "
                           f"({handler.__qualname__}) must be an async function")
        handlers[topic] = handler
    return handlers


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise CliError(f"cannot import handlers module {name!r}: no module named "
                           f"{missing!r} in the current directory or on PYTHONPATH") from None
        raise CliError(f"handlers module {name!r} failed to import: {exc}") from None
    except Exception as exc:
        raise CliError(f"handlers module {name!r} failed to import: "
                       f"{type(exc).__name__}: {exc}") from None


def _import_file(target: str) -> Any:
    path = Path(target)
    if not path.is_file():
        raise CliError(f"cannot import handlers file {target!r}: no such file")
    name = f"cordtrio_handlers_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import handlers file {target!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise CliError(f"handlers file {target!r} failed to import: "
                       f"{type(exc).__name__}: {exc}") from None
    return module


def job_topic(workflow: Workflow, step: Step) -> str:
    """The topic a worker-like step's jobs are published on (SPEC §5)."""
    return step.topic or f"job.workflow.{workflow.id}"


def check_handlers(
    workflow: Workflow, handlers: Mapping[str, Handler] | None, spec: str | None
) -> None:
    """Every worker-like step (on_error handlers included) needs a handler for its topic."""
    for step_id, step in workflow.steps.items():
        if not step.type.is_worker_like:
            continue
        topic = job_topic(workflow, step)
        if handlers is None:
            raise CliError(f"step {step_id!r} needs a handler for topic {topic!r}: "
                           "pass --handlers module[:attr]")
        if topic not in handlers:
            known = ", ".join(sorted(handlers)) or "none"
            raise CliError(f"step {step_id!r} needs a handler for topic {topic!r}, but "
                           f"--handlers {spec} has none (it has: {known})")
