"""The simulation's trace: one line per observed event, its hash, and what it counts.

A trace line is ``"<virtual time> <event>"``; the events are listed in ``docs/testing.md``
(``save``, ``tl``, ``create``, ``hook``, ``bus``, ``fault``, ``worker``, ``!! engine crash``,
``submit``...). Lines hold only seeded or virtual values (run ids come from a seeded stream,
times from the mock clock), so two runs of one seed give the same lines, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from ..model import StepRun, TimelineEvent, WorkflowRun
from ..protocol import BusPacket, JobCancel, JobRequest, JobResult, SystemAlert

__all__ = [
    "TRACE_TAIL",
    "all_step_runs",
    "count_faults",
    "packet_line",
    "saved_line",
    "timeline_lines",
    "trace_hash",
    "violation_detail",
]

TRACE_TAIL = 30
"""Trace lines a ``SimulationFailure`` message shows."""

WORKER_FAULTS = ("crash", "hang", "fail", "deny")


def all_step_runs(run: WorkflowRun) -> Iterator[tuple[str, StepRun]]:
    """Every StepRun of ``run`` (for-each children after their parent), with its step id."""
    for sid, sr in run.steps.items():
        yield sid, sr
        for child in sr.children.values():
            yield sid, child


def saved_line(run: WorkflowRun) -> str:
    """``save <run> <status> [step:status@attempts ...]``."""
    steps = " ".join(
        f"{sr.step_id}:{sr.status.value}" + (f"@{sr.attempts}" if sr.attempts else "")
        for _, sr in all_step_runs(run)
    )
    return f"save {run.id} {run.status.value} [{steps}]"


def timeline_lines(run_id: str, events: Iterable[TimelineEvent]) -> Iterator[str]:
    for e in events:
        yield f"tl {run_id} {e.type} {e.step_id} {e.status} {e.job_id} {e.message}".rstrip()


def packet_line(subject: str, packet: BusPacket) -> str:
    """A bus packet as ``<subject> <job id> ...`` (what identifies it, nothing random)."""
    p = packet.payload
    if isinstance(p, JobRequest):
        return f"{subject} {p.job_id}"
    if isinstance(p, JobResult):
        return f"{subject} {p.job_id} {p.status.name} by {p.worker_id}"
    if isinstance(p, JobCancel):
        return f"{subject} {p.job_id} ({p.reason})"
    if isinstance(p, SystemAlert):
        return f"{subject} alert {p.code} {p.level}"
    return f"{subject} {type(p).__name__}"


def trace_hash(trace: Iterable[str]) -> str:
    """SHA-256 of the trace, one ``\\n``-terminated line per event."""
    digest = hashlib.sha256()
    for line in trace:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def violation_detail(trace: Sequence[str], run_id: str, target: str, job_id: str,
                     what: str) -> str:
    """A violation's detail: ``run R step S job J: what``, then the trace lines about that
    job or step (about the run when neither is known), with their numbers: the first two
    and the last six when there are more than eight."""
    keys = [k for k in (job_id, f"{run_id}:{target}" if target else "") if k]
    lines = [f"    #{i} {line}" for i, line in enumerate(trace)
             if any(k in line for k in keys) or (not keys and run_id and run_id in line)]
    if len(lines) > 8:  # how it began, and the last of it
        lines = [*lines[:2], "    ...", *lines[-6:]]
    where = f"run {run_id}" + (f" step {target}" if target else "") + (
        f" job {job_id}" if job_id else "")
    return (f"{where}: {what}"
            + ("\n  trace lines that led there:\n" + "\n".join(lines) if lines else ""))


def count_faults(trace: Sequence[str]) -> dict[str, int]:
    """Injected faults by kind, read back from the trace: bus faults (``drop``,
    ``duplicate``, ``reorder``, ``delay``), ``store_failure`` (a write failed before it was
    applied), ``store_ambiguous`` (applied, reply lost), ``store_read_failure``,
    ``worker_<kind>`` and
    ``engine_crash``."""
    counts: Counter[str] = Counter()
    for line in trace:
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        if parts[1] == "fault":
            counts["store_failure" if parts[2] == "store" else parts[2]] += 1
        elif parts[1] == "worker" and parts[2] in WORKER_FAULTS:
            counts[f"worker_{parts[2]}"] += 1
        elif parts[1] == "!!" and parts[2] == "engine":
            counts["engine_crash"] += 1
    return dict(counts)
