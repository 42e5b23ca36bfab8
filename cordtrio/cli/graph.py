"""``cordtrio graph``: a workflow's DAG as Mermaid or Graphviz DOT text.

Solid edges are ``depends_on``; dashed edges labelled ``on_error`` lead to error handlers.
Node shapes follow the step type: a box for jobs, a double box for ``for_each`` fan-outs, a
rhombus for conditions, a hexagon for approvals, a stadium for delays and a flag for notify.
"""

from __future__ import annotations

import json
import re

from ..model import Step, StepType, Workflow

_SAFE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MERMAID_KEYWORDS = {"end", "graph", "subgraph", "flowchart", "style", "class", "click"}


def describe(step: Step) -> str:
    """A short second line for a node: the topic, fan-out, condition or type."""
    if step.type.is_worker_like:
        text = step.topic or step.worker_id or str(step.type.value)
        if step.for_each:
            par = f", max {step.max_parallel}" if step.max_parallel else ""
            text += f" (for each {step.for_each}{par})"
        return text
    if step.type == StepType.CONDITION:
        return step.condition or "condition"
    if step.type == StepType.DELAY:
        if step.delay_sec:
            return f"delay {step.delay_sec:g}s"
        return f"delay until {step.delay_until}" if step.delay_until else "delay"
    return str(step.type.value)


def to_mermaid(workflow: Workflow) -> str:
    ids = _node_ids(workflow)
    lines = ["flowchart TD"]
    for step_id, step in workflow.steps.items():
        label = _mermaid_label(f"{step_id}<br/>{describe(step)}")
        left, right = _mermaid_shape(step)
        lines.append(f"    {ids[step_id]}{left}{label}{right}")
    for step_id, step in workflow.steps.items():
        for dep in step.depends_on:
            if dep in ids:
                lines.append(f"    {ids[dep]} --> {ids[step_id]}")
    for step_id, step in workflow.steps.items():
        if step.on_error in ids:
            lines.append(f"    {ids[step_id]} -. on_error .-> {ids[step.on_error]}")
    return "\n".join(lines)


def _mermaid_shape(step: Step) -> tuple[str, str]:
    if step.type == StepType.CONDITION:
        return "{", "}"
    if step.type == StepType.APPROVAL:
        return "{{", "}}"
    if step.type == StepType.DELAY:
        return "([", "])"
    if step.type == StepType.NOTIFY:
        return ">", "]"
    if step.for_each:
        return "[[", "]]"
    return "[", "]"


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def _node_ids(workflow: Workflow) -> dict[str, str]:
    """Step ids as Mermaid node ids: kept when safe, else ``step_<n>`` (the label keeps the
    real id)."""
    ids: dict[str, str] = {}
    for n, step_id in enumerate(workflow.steps):
        safe = _SAFE_ID.match(step_id) and step_id.lower() not in _MERMAID_KEYWORDS
        ids[step_id] = step_id if safe else f"step_{n}"
    return ids


def to_dot(workflow: Workflow) -> str:
    lines = [f"digraph {_dot_str(workflow.id)} {{", "    rankdir=TB;",
             '    node [fontname="Helvetica", fontsize=11];']
    for step_id, step in workflow.steps.items():
        label = _dot_str(f"{step_id}\n{describe(step)}")
        lines.append(f"    {_dot_str(step_id)} [label={label}, shape={_dot_shape(step)}];")
    for step_id, step in workflow.steps.items():
        for dep in step.depends_on:
            lines.append(f"    {_dot_str(dep)} -> {_dot_str(step_id)};")
    for step_id, step in workflow.steps.items():
        if step.on_error:
            lines.append(f"    {_dot_str(step_id)} -> {_dot_str(step.on_error)} "
                         '[style=dashed, label="on_error"];')
    lines.append("}")
    return "\n".join(lines)


def _dot_shape(step: Step) -> str:
    if step.type == StepType.CONDITION:
        return "diamond"
    if step.type == StepType.APPROVAL:
        return "hexagon"
    if step.type == StepType.DELAY:
        return "ellipse"
    if step.type == StepType.NOTIFY:
        return "note"
    return "box3d" if step.for_each else "box"


def _dot_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a DOT string: double quotes, \" and \n escapes
