"""Durability in process mode: ``cordtrio serve`` against a Redis that keeps nothing (the
start-up warning, /health, /metrics) and against one restarted without persistence under
running work (one clear log line, not one per run)."""

from __future__ import annotations

import json
import time
import urllib.request

from e2e_harness import Deployment, poll, read_run, submit_runs, workflow_file

from cordtrio.backends.redis.testing import run_redis_server

WARNING = "WARNING: Redis at"


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def test_serve_warns_once_when_redis_keeps_nothing(deployment: Deployment) -> None:
    d = deployment  # its redis-server runs with --save '' --appendonly no
    serve = d.serve()
    port = d.http_port(serve)
    output = serve.output()
    warnings = [line for line in output.splitlines() if WARNING in line]
    assert len(warnings) == 1, output
    assert "keeps nothing across a restart" in warnings[0] and d.redis_url in warnings[0]
    assert "--appendonly yes" in warnings[0]
    assert json.loads(_get(port, "/health"))["persistence"] == "none"
    assert "cordtrio_redis_persistent 0" in _get(port, "/metrics").splitlines()
    serve.stop()

    (d.directory / "aof").mkdir()
    with run_redis_server(d.directory / "aof", appendonly=True) as durable:
        quiet = d.start("serve-aof", "serve", "--listen", d.bus + "2", "--http",
                        "127.0.0.1:0", "--redis", durable.url)
        quiet.wait_for("ready:", timeout=30)
        port = d.http_port(quiet)
        assert WARNING not in quiet.output()
        assert json.loads(_get(port, "/health"))["persistence"] == "aof"
        assert "cordtrio_redis_persistent 1" in _get(port, "/metrics").splitlines()
        quiet.stop()


def test_redis_restart_without_persistence_is_one_line_not_one_per_run(
        deployment: Deployment) -> None:
    d = deployment
    assert d.cli("workflows", "put", workflow_file("e2e_approval.yaml")).returncode == 0
    serve = d.serve("serve", "--lease-ttl", "3")
    d.worker("w1")
    runs = submit_runs(d.redis_url, "e2e_approval", 20)
    for run_id in runs:
        poll(lambda rid=run_id: True if read_run(d.redis_url, rid)["status"] == "waiting"
             else None, f"run {run_id} to wait for its approval", timeout=30)
    before = len(serve.output().splitlines())

    d.redis.stop()  # every run, lease and workflow is gone when it comes back
    d.redis.start()
    poll(lambda: True if "lost 20 run(s)' data" in serve.output() else None,
         "serve to report the lost runs", timeout=20)
    time.sleep(3)  # a further renewal and takeover scan: nothing more per run
    new = serve.output().splitlines()[before:]
    lost = [line for line in new if "Redis lost" in line]
    assert len(lost) == 1, "\n".join(new)
    assert "restart without persistence?" in lost[0]
    per_run = [line for line in new if any(run_id in line for run_id in runs)
               and line not in lost]
    assert per_run == [], "\n".join(new)
    assert len(new) <= 5, "\n".join(new)
    assert "Traceback" not in serve.output()
    assert serve.popen.poll() is None  # still serving
