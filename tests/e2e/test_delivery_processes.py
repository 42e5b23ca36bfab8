"""At-least-once job delivery (SPEC §13) with real processes: ``cordtrio serve``, ``cordtrio
worker`` and ``redis-server``, broken in the ways deployments break.

Every scenario but the last runs workflows whose steps have no ``timeout_sec`` (and no
retries): a job that the bus loses is never noticed by a timeout, so the run would hang —
delivery alone must get every run through. Each test checks that every run succeeded and
counts the handlers' executions (``e2e_handlers.py`` records them) against the attempts:
always attempt 1, at least once per step, more than once only where a process died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
import trio
from e2e_harness import (
    HANDLERS,
    Deployment,
    Proc,
    attempts_by_target,
    poll,
    submit_runs,
    workflow_file,
)

from cordtrio.backends.redis import connect
from cordtrio.model import RunStatus

CHAIN = [f"s{i}" for i in range(1, 6)]  # e2e_chain.yaml
UPGRADE = ["before", "extra", "after"]  # e2e_upgrade.yaml
TIMED = ["first", "second"]  # e2e_timed.yaml
LEASE_TTL = "5"  # a killed serve's runs are taken over after 5 s (default 15)
LIVENESS_TIMEOUT = 5.0  # the router's default: a silent worker is cut off after this


# ------------------------------------------------------------------------------ helpers


def _put(d: Deployment, *files: str) -> None:
    for name in files:
        done = d.cli("workflows", "put", workflow_file(name))
        assert done.returncode == 0, done.stderr + done.stdout


def _status_counts(url: str) -> Counter[str]:
    async def go() -> Counter[str]:
        async with connect(url) as redis:
            return Counter({s.value: len(await redis.store.list_run_ids_by_status(s.value,
                                                                                  100_000))
                            for s in RunStatus})

    return trio.run(go)


def _read_runs(url: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    async def go() -> dict[str, dict[str, Any]]:
        async with connect(url) as redis:
            return {run_id: (await redis.store.get_run(run_id)).to_dict()
                    for run_id in run_ids}

    return trio.run(go)


def _wait_finished(d: Deployment, run_ids: list[str], what: str,
                   timeout: float = 60.0) -> Counter[str]:
    """Wait until every run (of the deployment's Redis: all of ``run_ids``) is finished;
    on a timeout, fail with the counts by status and the unfinished runs' steps."""
    seen: list[Counter[str]] = []

    def finished() -> Counter[str] | None:
        counts = _status_counts(d.redis_url)
        seen.append(counts)
        done = sum(counts[s.value] for s in RunStatus if s.is_terminal)
        return counts if done >= len(run_ids) else None

    try:
        return poll(finished, what, timeout=timeout, interval=0.25)
    except pytest.fail.Exception:
        runs = _read_runs(d.redis_url, run_ids)
        unfinished = {run_id: {sid: step["status"] for sid, step in run["steps"].items()}
                      for run_id, run in runs.items()
                      if not RunStatus(run["status"]).is_terminal}
        sample = dict(list(unfinished.items())[:5])
        logs = "\n".join(f"--- {p.name}:\n{p.output()[-1500:]}" for p in d.procs)
        pytest.fail(f"{what}: not within {timeout}s; by status {dict(seen[-1])}; "
                    f"{len(unfinished)} unfinished, e.g. {sample}\n{logs}")


def _assert_all_succeeded(d: Deployment, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    runs = _read_runs(d.redis_url, run_ids)
    bad = {run_id: {"status": run["status"],
                    "errors": {sid: step.get("error") for sid, step in run["steps"].items()
                               if step.get("error")}}
           for run_id, run in runs.items() if run["status"] != RunStatus.SUCCEEDED.value}
    assert not bad, f"{len(bad)} of {len(run_ids)} runs did not succeed, e.g. " \
                    f"{dict(list(bad.items())[:5])}"
    return runs


def _records(d: Deployment) -> dict[str, list[tuple[str, str]]]:
    """Per worker: its handlers' records (``start``/``done`` and the job id), in order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for log in d.records.glob("*.log"):
        lines = log.read_text(encoding="utf-8").splitlines()
        out[log.stem] = [(event, job_id) for event, _, job_id in
                         (line.partition(" ") for line in lines)]
    return out


def _assert_executions(d: Deployment, run_ids: list[str], steps: list[str], *,
                       most: int) -> Counter[str]:
    """Every step of every run started at least once and at most ``most`` times, all of
    it attempt 1 (no step needed a retry), and every step finished (``done``) somewhere.
    Returns the starts per ``run:step``."""
    executions = d.executions()
    attempts = attempts_by_target(executions)
    job_ids = {job_id for counts in executions.values() for job_id in counts}
    assert all(job_id.endswith("@1") for job_id in job_ids), \
        sorted(j for j in job_ids if not j.endswith("@1"))[:10]
    done = {job_id for records in _records(d).values() for event, job_id in records
            if event == "done"}
    wrong = {}
    for run_id in run_ids:
        for step in steps:
            target = f"{run_id}:{step}"
            if not 1 <= attempts[target] <= most or f"{target}@1" not in done:
                wrong[target] = attempts[target]
    assert not wrong, f"steps executed outside 1..{most} times (or never finished): " \
                      f"{dict(list(wrong.items())[:10])} ({len(wrong)} in all)"
    return attempts


def _in_flight(records: list[tuple[str, str]]) -> set[str]:
    """Job ids started and not (yet) done."""
    running: set[str] = set()
    for event, job_id in records:
        if event == "start":
            running.add(job_id)
        elif event == "done":
            running.discard(job_id)
    return running


def _starts(d: Deployment) -> int:
    return sum(sum(counts.values()) for counts in d.executions().values())


def _queue_times(url: str, run_ids: list[str],
                 runs: dict[str, dict[str, Any]]) -> list[float]:
    """Seconds from each step's (last) dispatch to its worker's start acknowledgement."""

    async def go() -> list[float]:
        out = []
        async with connect(url) as redis:
            for run_id in run_ids:
                dispatched = {e.step_id: e.time for e in
                              await redis.store.list_timeline_events(run_id)
                              if e.type == "step_dispatched" and e.time is not None}
                for step_id, step in runs[run_id]["steps"].items():
                    started = datetime.fromisoformat(step["started_at"])
                    out.append((started - dispatched[step_id]).total_seconds())
        return out

    return trio.run(go)


SUBSCRIBER = textwrap.dedent("""
    import sys
    import trio
    from cordtrio.backends.nng import open_nng_bus
    from cordtrio.protocol import SUBJECT_SUBMIT

    async def main():
        async with open_nng_bus(sys.argv[1]) as bus:
            async with bus.subscribe(SUBJECT_SUBMIT):  # and never reads
                print("ready: subscribed to", SUBJECT_SUBMIT, flush=True)
                await trio.sleep_forever()

    trio.run(main)
""")


def _start_python(d: Deployment, name: str, code: str, *args: str) -> Proc:
    """A Python process of the test's own (killed at the end like the others)."""
    out = d.directory / f"{name}.out"
    with open(out, "wb") as f:
        popen = subprocess.Popen([sys.executable, "-c", code, *args],
                                 stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, env=d.env(), cwd=d.directory)
    proc = Proc(name, popen, out)
    d.procs.append(proc)
    return proc


# ---------------------------------------------------------------------------- scenarios

RUNS = 40


def test_killed_serve_mid_run_new_serve_finishes_every_run(deployment: Deployment) -> None:
    """``serve`` (engine and bus router) killed with SIGKILL while jobs are queued and
    running: the jobs that died with the router come back through the new engine's
    recovery (same job id), and results of jobs the workers finish meanwhile reach it."""
    d = deployment
    _put(d, "e2e_chain.yaml")
    d.cluster("w1", "w2", serve_args=("--lease-ttl", LEASE_TTL))
    first = d.procs[0]
    run_ids = submit_runs(d.redis_url, "e2e_chain", RUNS, {"sleep": 0.3})

    poll(lambda: True if _starts(d) >= RUNS else None, f"{RUNS} jobs to start", timeout=60)
    first.stop(signal.SIGKILL)
    at_kill = _status_counts(d.redis_url)
    assert at_kill["succeeded"] < RUNS, f"the crash must come mid-way: {dict(at_kill)}"

    d.serve("serve-2", "--lease-ttl", LEASE_TTL)
    _wait_finished(d, run_ids, "every run to finish after the restart", timeout=90)
    _assert_all_succeeded(d, run_ids)
    # a job may run twice: once before the crash, once more when recovery publishes it
    _assert_executions(d, run_ids, CHAIN, most=2)


def test_killed_worker_mid_run_other_worker_finishes_every_run(deployment: Deployment) -> None:
    """One of two workers killed with SIGKILL holding jobs: its connection drops and the
    router hands its unacknowledged jobs to the other worker."""
    d = deployment
    _put(d, "e2e_chain.yaml")
    d.cluster("w1", "w2")
    victim = d.procs[1]
    run_ids = submit_runs(d.redis_url, "e2e_chain", RUNS, {"sleep": 0.5})

    def victim_busy() -> set[str] | None:
        running = _in_flight(_records(d).get("w1", []))
        return running if len(running) >= 5 else None

    poll(victim_busy, "w1 to run 5 jobs at once", timeout=60, interval=0.05)
    victim.stop(signal.SIGKILL)
    killed_with = _in_flight(_records(d)["w1"])
    assert killed_with, "w1 must be killed with jobs in flight"
    assert _status_counts(d.redis_url)["succeeded"] < RUNS

    _wait_finished(d, run_ids, "every run to finish after the worker died", timeout=60)
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, CHAIN, most=2)
    # the jobs w1 died with were run again, by w2
    w2 = d.executions()["w2"]
    assert all(w2[job_id] >= 1 for job_id in killed_with), killed_with - set(w2)


def test_stopped_worker_loses_its_jobs_and_does_not_run_them_after_resuming(
        deployment: Deployment) -> None:
    """One of two workers stopped with SIGSTOP (a hung process: its connection stays up,
    it just says nothing) holding jobs, running and prefetched: after the liveness timeout
    the router cuts it off and gives its jobs to the other worker, and every run finishes
    while it is still stopped. Resumed (SIGCONT), it stops the handlers of the jobs taken
    from it and starts none of them.

    w1's handlers sleep 30 s (``CORDTRIO_E2E_SLEEP``), so the ones it was running are still
    running when it resumes, and it has 2 slots, so it holds prefetched jobs too."""
    d = deployment
    _put(d, "e2e_chain.yaml")
    procs = [d.serve(wait=False),
             d.worker("w1", "--concurrency", "2", wait=False, CORDTRIO_E2E_SLEEP="30"),
             d.worker("w2", wait=False)]
    for proc in procs:
        proc.wait_for("ready:", timeout=30)
    stopped = procs[1]
    run_ids = submit_runs(d.redis_url, "e2e_chain", RUNS, {"sleep": 0.2})

    poll(lambda: True if len(_in_flight(_records(d).get("w1", []))) >= 2 else None,
         "w1 to run 2 jobs", timeout=60, interval=0.05)
    stopped.popen.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        before = _records(d)["w1"]  # w1 writes nothing while stopped
        held = _in_flight(before)
        assert _status_counts(d.redis_url)["succeeded"] < RUNS
        # every run finishes without w1: its jobs were handed to w2
        _wait_finished(d, run_ids, "every run to finish while w1 is stopped", timeout=60)
        stopped_for = time.monotonic() - stopped_at
        assert stopped_for > LIVENESS_TIMEOUT, stopped_for
        assert _records(d)["w1"] == before
    finally:
        stopped.popen.send_signal(signal.SIGCONT)
    print(f"w1 stopped for {stopped_for:.1f}s")
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, CHAIN, most=2)
    taken = {job_id for event, job_id in _records(d)["w2"] if event == "start"}
    assert held <= taken, f"jobs w1 was running and w2 never ran: {held - taken}"

    # resumed, w1 learns that its connection is gone and stops the handlers it was running
    # (they had 20 s and more to go)
    def stopped_all() -> bool | None:
        after = _records(d)["w1"][len(before):]
        return True if held <= {job_id for event, job_id in after if event == "stop"} \
            else None

    try:
        poll(stopped_all, "w1 to stop the handlers of the jobs taken from it", timeout=15)
    except pytest.fail.Exception:
        pytest.fail(f"w1 did not stop {held} after SIGCONT; its records since: "
                    f"{_records(d)['w1'][len(before):]}\n{stopped.output()[-3000:]}")
    after = _records(d)["w1"][len(before):]
    started_again = {job_id for event, job_id in after if event == "start"} & taken
    finished = {job_id for event, job_id in after if event == "done"} & taken
    assert not started_again, f"w1 started jobs w2 had taken over: {sorted(started_again)}"
    assert not finished, f"w1 finished jobs w2 had taken over: {sorted(finished)}"
    assert stopped.popen.poll() is None, stopped.output()


def test_runs_submitted_before_any_worker_wait_for_one(deployment: Deployment) -> None:
    """With no worker at all, the jobs wait in the router's queue (they are not dropped);
    the first worker to come gets them all."""
    d = deployment
    _put(d, "e2e_chain.yaml")
    d.serve()
    run_ids = submit_runs(d.redis_url, "e2e_chain", RUNS, {"sleep": 0})
    # every run started (its first job published to nobody)
    poll(lambda: True if _status_counts(d.redis_url)["running"] == RUNS else None,
         "every run to be running", timeout=30)
    assert _starts(d) == 0

    d.worker("w1")
    _wait_finished(d, run_ids, "every run to finish once a worker is there", timeout=60)
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, CHAIN, most=1)


def test_workers_with_different_topics_run_each_step_once(deployment: Deployment) -> None:
    """A rolling upgrade: the new worker serves one topic more than the old one. Each topic
    is one queue, whatever else a worker serves: every job runs exactly once."""
    d = deployment
    _put(d, "e2e_upgrade.yaml")
    procs = [d.serve(wait=False), d.worker("old", wait=False),
             d.worker("new", "--handlers", f"{HANDLERS}:UPGRADED", wait=False)]
    for proc in procs:
        proc.wait_for("ready:", timeout=30)
    run_ids = submit_runs(d.redis_url, "e2e_upgrade", RUNS, {"sleep": 0.05})

    _wait_finished(d, run_ids, "every run to finish", timeout=60)
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, UPGRADE, most=1)
    executions = d.executions()
    assert not any(":extra@" in job_id for job_id in executions.get("old", {})), \
        "the old worker has no handler for job.e2e.extra"


def test_subscriber_that_never_reads_does_not_stall_dispatch(deployment: Deployment) -> None:
    """A plain subscriber of ``sys.job.submit`` that never reads (a monitoring tool gone
    wrong) gets a copy of every job request; the router cuts it off instead of letting it
    hold up the workers' deliveries."""
    d = deployment
    _put(d, "e2e_chain.yaml")
    d.cluster("w1")
    subscriber = _start_python(d, "subscriber", SUBSCRIBER, d.bus)
    subscriber.wait_for("ready:", timeout=30)

    started = time.monotonic()
    run_ids = submit_runs(d.redis_url, "e2e_chain", 2 * RUNS, {"sleep": 0})
    _wait_finished(d, run_ids, "every run to finish despite the stuck subscriber",
                   timeout=30)
    elapsed = time.monotonic() - started
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, CHAIN, most=1)
    print(f"{2 * RUNS} runs in {elapsed:.1f}s with a subscriber that never reads")


OUTAGE = 6.0


def test_redis_down_for_six_seconds_is_waited_out(aof_deployment: Deployment) -> None:
    """redis-server killed with SIGKILL mid-run and started again 6 s later on the same
    port (its AOF keeps what it acknowledged): engine and workers wait it out with backoff;
    no step fails with a store error, none runs twice."""
    d = aof_deployment
    _put(d, "e2e_chain.yaml")
    d.cluster("w1", "w2")
    run_ids = submit_runs(d.redis_url, "e2e_chain", RUNS, {"sleep": 0.2})

    poll(lambda: True if _starts(d) >= RUNS else None, f"{RUNS} jobs to start", timeout=60)
    d.redis.process.kill()
    d.redis.process.wait(timeout=5)
    down_at = time.monotonic()
    time.sleep(OUTAGE)  # the outage itself
    starts_while_down = _starts(d)
    d.redis.start()
    print(f"redis down for {time.monotonic() - down_at:.1f}s")
    assert all(p.popen.poll() is None for p in d.procs), \
        [(p.name, p.output()[-2000:]) for p in d.procs if p.popen.poll() is not None]
    assert _status_counts(d.redis_url)["succeeded"] < RUNS, "the outage must come mid-way"
    assert starts_while_down < RUNS * len(CHAIN)

    _wait_finished(d, run_ids, "every run to finish after the outage", timeout=90)
    _assert_all_succeeded(d, run_ids)
    _assert_executions(d, run_ids, CHAIN, most=1)


LOAD_RUNS = int(os.environ.get("CORDTRIO_E2E_LOAD_RUNS", "2000"))
LOAD_CONCURRENCY = "4"  # one worker, few slots: jobs queue for much longer than 10 s
LOAD_SLEEP = 0.02


def test_queue_time_does_not_count_against_step_timeouts(deployment: Deployment) -> None:
    """2,000 runs of two fast steps with ``timeout_sec: 10``, submitted at once to one worker
    with few slots: the later jobs wait in the router's queue far longer than 10 s. The
    timeout counts from the worker's start, so none times out and none runs twice."""
    d = deployment
    _put(d, "e2e_timed.yaml")
    procs = [d.serve(wait=False), d.worker("w1", "--concurrency", LOAD_CONCURRENCY,
                                           wait=False)]
    for proc in procs:
        proc.wait_for("ready:", timeout=30)
    started = time.monotonic()
    run_ids = submit_runs(d.redis_url, "e2e_timed", LOAD_RUNS, {"sleep": LOAD_SLEEP})
    submitted = time.monotonic() - started

    _wait_finished(d, run_ids, f"{LOAD_RUNS} runs to finish", timeout=150)
    elapsed = time.monotonic() - started
    print(f"{LOAD_RUNS} runs: submitted in {submitted:.1f}s, finished after {elapsed:.1f}s")
    runs = _assert_all_succeeded(d, run_ids)
    # the queue was long enough to matter: jobs waited more than their 10 s timeout
    waits = _queue_times(d.redis_url, run_ids[::20], runs)
    print(f"queue time (dispatch to the worker's start) of 1 in 20 runs: "
          f"max {max(waits):.1f}s, median {sorted(waits)[len(waits) // 2]:.1f}s")
    assert max(waits) > 10, f"the load was too light to test anything: {max(waits):.1f}s"
    attempts = Counter(step.get("attempts", 0) for run in runs.values()
                       for step in run["steps"].values())
    assert attempts == Counter({1: LOAD_RUNS * len(TIMED)}), attempts
    _assert_executions(d, run_ids, TIMED, most=1)
