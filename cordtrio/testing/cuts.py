"""Smaller workflows for a smaller reproduction: keep some workflows, drop some steps.

``cut_workflows(workflows, keep=..., drop=...)`` is what ``simulate(keep_workflows=...,
drop_steps=...)`` (``--keep-workflow``, ``--drop-step`` on the command line) applies to
the workflows of a seed, after they are drawn, so that the workflows kept are the very
ones the seed drew. A dropped step (``"wf-0/s3"``) leaves its workflow, every
``depends_on`` that names it, and every ``on_error`` that points at it; the rest of the
workflow stays as it was. The shrinker (``cordtrio.testing.shrink``) cuts this way; a cut
that leaves a workflow invalid (no step left, say) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from ..model import Workflow
from ..validation import validate_workflow

__all__ = ["cut_workflows", "step_ref"]


def step_ref(workflow_id: str, step_id: str) -> str:
    """How a step is named for ``drop``: ``"<workflow>/<step>"``."""
    return f"{workflow_id}/{step_id}"


def cut_workflows(workflows: Sequence[Workflow], *, keep: Collection[str] = (),
                  drop: Collection[str] = ()) -> list[Workflow]:
    """``workflows`` with only the ids in ``keep`` (all when empty), and without the steps
    in ``drop`` (``step_ref``), each validated."""
    known = {wf.id for wf in workflows}
    missing = sorted(set(keep) - known)
    if missing:
        raise ValueError(f"no workflow {', '.join(missing)} to keep; there are "
                         f"{', '.join(sorted(known))}")
    refs = {step_ref(wf.id, sid) for wf in workflows for sid in wf.steps}
    unknown = sorted(set(drop) - refs)
    if unknown:
        raise ValueError(f"no step {', '.join(unknown)} to drop")
    out = []
    for wf in workflows:
        if keep and wf.id not in keep:
            continue
        gone = {sid for sid in wf.steps if step_ref(wf.id, sid) in drop}
        if gone:
            wf = _without(wf, gone)
        out.append(wf)
    return out


def _without(wf: Workflow, gone: set[str]) -> Workflow:
    steps = {
        sid: replace(step, depends_on=[d for d in step.depends_on if d not in gone],
                     on_error="" if step.on_error in gone else step.on_error)
        for sid, step in wf.steps.items() if sid not in gone}
    if not steps:
        raise ValueError(f"workflow {wf.id} would have no step left")
    cut = replace(wf, steps=steps)
    validate_workflow(cut)
    return cut
