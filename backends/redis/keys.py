"""The Redis key layout of SPEC §11 and the field names inside a run's hash.

Keys follow the original's names (``wf:def:<id>``, ``wf:run:<id>``...) so existing tooling
finds them; see ``store.py`` for what each holds and why a run is a hash.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- keys

WF_INDEX_ALL = "wf:index:all"
RUNS_ALL = "wf:runs:all"


def workflow_key(workflow_id: str) -> str:
    return "wf:def:" + workflow_id


def workflow_org_index(org_id: str) -> str:
    return "wf:index:org:" + org_id


def run_key(run_id: str) -> str:
    return "wf:run:" + run_id


def runs_by_workflow_key(workflow_id: str) -> str:
    return "wf:runs:" + workflow_id


def runs_by_status_key(status: str) -> str:
    return "wf:runs:status:" + status


def active_runs_key(org_id: str) -> str:
    return "wf:runs:active:" + org_id


def timeline_key(run_id: str) -> str:
    return "wf:run:timeline:" + run_id


def idempotency_key(key: str) -> str:
    return "wf:run:idempotency:" + key


# ------------------------------------------------------------------- run hash fields

HEADER = "header"
INPUT = "input"
STEP = "step:"
CHILD = "child:"
CTX = "ctx:"
CTX_STEPS_MARKER = "ctx:steps"
CTXSTEP = "ctxstep:"
ORD = "ord:"
SAVED = "saved"
"""The run-hash field holding the token of the last step write (``step_write``); a name
without a ``:``, so a run read ignores it."""
EMPTY_MAP = b"{}"


def escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


def step_field(step_id: str) -> str:
    return STEP + step_id


def child_prefix(parent: str) -> str:
    return CHILD + escape(parent) + ":"


def child_field(parent: str, child: str) -> str:
    return child_prefix(parent) + child


def ctx_field(key: str) -> str:
    return CTX + key


def ctxstep_field(key: str) -> str:
    return CTXSTEP + key
