"""Process mode end to end: ``cordtrio serve`` + two ``cordtrio worker`` processes + Redis,
driven by ``cordtrio workflows`` / ``cordtrio runs`` commands (their output and exit status),
and the workers' own records of what they ran."""

from __future__ import annotations

import json
import signal
import urllib.request
from typing import Any

import pytest
from e2e_harness import (
    Deployment,
    attempts_by_target,
    poll,
    read_run,
    submit_runs,
    workflow_file,
)

NAMES = ("e2e_approval", "e2e_many", "e2e_hang", "e2e_slow")


@pytest.fixture(scope="module")
def cluster(module_deployment: Deployment) -> Deployment:
    """Redis + ``serve`` + workers w1, w2, shared by this module's tests (the last one
    kills a worker)."""
    d = module_deployment
    done = d.cli("workflows", "put", *(workflow_file(f"{n}.yaml") for n in NAMES))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"saved workflow {n!r} ({s} steps)" for n, s in zip(NAMES, (3, 2, 1, 1), strict=True)]
    d.cluster("w1", "w2")
    return d


def _run(d: Deployment, run_id: str) -> dict[str, Any]:
    return read_run(d.redis_url, run_id)


def _submit(d: Deployment, *args: str) -> str:
    done = d.cli("runs", "submit", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _wait_status(d: Deployment, run_id: str, status: str, timeout: float = 20.0) -> None:
    poll(lambda: True if _run(d, run_id)["status"] == status else None,
         f"run {run_id} to be {status}", timeout=timeout)


def test_approve_reject_cancel_rerun_from_the_command_line(cluster: Deployment) -> None:
    d = cluster
    # submit → waits for approval → approve → succeeds
    run_id = _submit(d, "e2e_approval")
    _wait_status(d, run_id, "waiting")
    shown = d.cli("runs", "show", run_id)
    assert shown.returncode == 0 and "approve" in shown.stdout and "waiting" in shown.stdout
    approved = d.cli("runs", "approve", run_id, "approve")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"approved step 'approve' of run {run_id}"
    waited = d.cli("runs", "wait", run_id, "--timeout", "20")
    assert (waited.returncode, waited.stdout.strip()) == (0, f"run {run_id}: succeeded")
    shown_json, timeline_json = d.cli_many(("runs", "show", run_id, "--json"),
                                           ("runs", "timeline", run_id, "--json"))
    run = json.loads(shown_json.stdout)
    assert run["context"]["steps"]["finish"]["output"] == {"value": 2, "attempt": 1}
    timeline = json.loads(timeline_json.stdout)
    assert isinstance(timeline, list)
    assert any(e.get("step_id") == "approve" for e in timeline)

    # a rejected approval fails the run (status 1); cancelling a running job's run
    rejected, = submit_runs(d.redis_url, "e2e_approval", 1)
    slow, = submit_runs(d.redis_url, "e2e_slow", 1)
    _wait_status(d, rejected, "waiting")
    poll(lambda: True if _run(d, slow)["steps"].get("slow", {}).get("status") == "running"
         else None, "the slow job to run")
    reject, cancel = d.cli_many(("runs", "approve", rejected, "approve", "--reject"),
                                ("runs", "cancel", slow))
    assert (reject.returncode, cancel.returncode) == (0, 0), reject.stderr + cancel.stderr
    assert reject.stdout.strip() == f"rejected step 'approve' of run {rejected}"
    assert cancel.stdout.strip() == f"cancelled run {slow}"
    waited_rejected, waited_slow = d.cli_many(("runs", "wait", rejected, "--timeout", "20"),
                                              ("runs", "wait", slow, "--timeout", "20"))
    assert waited_rejected.returncode == 1 and "failed" in waited_rejected.stdout
    assert waited_slow.returncode == 1 and "cancelled" in waited_slow.stdout

    # rerun the first run from its last step (prepare/approve kept), and submit --wait
    rerun, done = d.cli_many(
        ("runs", "rerun", run_id, "--from", "finish", "--wait", "--timeout", "30"),
        ("runs", "submit", "e2e_many", "--input", '{"items": [1, 2, 3]}',
         "--idempotency-key", "k-1", "--wait", "--timeout", "30", "--json"))
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    new_id = rerun.stdout.split()[1]
    assert new_id != run_id
    assert rerun.stdout.strip().endswith(f"run {new_id}: succeeded")
    assert attempts_by_target(d.executions())[f"{new_id}:prepare"] == 0  # kept, not rerun
    assert done.returncode == 0, done.stderr
    many = json.loads(done.stdout)
    assert many["status"] == "succeeded"
    assert many["steps"]["flaky"]["attempts"] == 2  # failed once, retried

    # idempotency, list, and an unknown run, from real processes
    again, listing, missing = d.cli_many(
        ("runs", "submit", "e2e_many", "--idempotency-key", "k-1"), ("runs", "list", "--json"),
        ("runs", "show", "no-such-run"))
    assert again.stdout.strip() == many["id"]
    listed = json.loads(listing.stdout)
    assert {run_id, rejected, slow, new_id, many["id"]} <= {r["id"] for r in listed}
    assert missing.returncode == 2
    assert missing.stderr.strip() == "cordtrio: error: run 'no-such-run' not found"


def test_queue_group_spreads_jobs_and_runs_each_once(cluster: Deployment) -> None:
    d = cluster
    items = json.dumps({"items": list(range(40)), "sleep": 0.05})
    done = d.cli("runs", "submit", "e2e_many", "--input", items, "--wait", "--timeout", "40")
    assert done.returncode == 0, done.stderr + done.stdout
    run_id = done.stdout.split()[1]
    executions = d.executions()
    mine = {w: {j for j in c if j.startswith(run_id)} for w, c in executions.items()}
    assert mine["w1"] and mine["w2"], "both workers of the queue group got jobs"
    assert not mine["w1"] & mine["w2"], "no job went to both workers"
    assert all(n == 1 for c in executions.values() for n in c.values())
    assert len(mine["w1"] | mine["w2"]) == 40 + 2  # 40 items, flaky twice

    serve = next(p for p in d.procs if p.name == "serve")
    url = f"http://127.0.0.1:{d.http_port(serve)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        samples = dict(line.rsplit(" ", 1) for line in reply.read().decode().splitlines()
                       if line and not line.startswith("#"))
    assert int(samples["cordtrio_steps_dispatched_total"]) >= 42
    assert int(samples['cordtrio_steps_finished_total{status="succeeded"}']) >= 2
    assert int(samples["cordtrio_step_result_latency_seconds_count"]) >= 2
    assert int(samples['cordtrio_runs{status="succeeded"}']) >= 1


def test_worker_killed_mid_job_the_step_times_out_and_retries_elsewhere(
        cluster: Deployment) -> None:
    d = cluster
    run_id = _submit(d, "e2e_hang")
    first = f"{run_id}:hang@1"

    def holder() -> str | None:
        for worker, counts in d.executions().items():
            if counts[first]:
                return worker
        return None

    victim = poll(holder, "a worker to start the hanging attempt")
    proc = next(p for p in d.procs if p.name == victim)
    proc.stop(signal.SIGKILL)
    waited = d.cli("runs", "wait", run_id, "--timeout", "30")
    assert (waited.returncode, waited.stdout.strip()) == (0, f"run {run_id}: succeeded")
    survivor = "w2" if victim == "w1" else "w1"
    assert d.executions()[survivor][f"{run_id}:hang@2"] == 1
    run = _run(d, run_id)
    assert run["steps"]["hang"]["attempts"] == 2
