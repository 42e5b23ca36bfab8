"""A bus with a token, across processes: ``cordtrio serve`` with ``$CORDTRIO_BUS_TOKEN``,
a ``cordtrio worker`` with the same token in ``--token-file`` runs its jobs, one with a
wrong token gets none (it gives up, naming the reason)."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_harness import Deployment, workflow_file


def test_only_a_worker_with_the_token_runs_jobs(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    right, wrong = tmp_path / "token", tmp_path / "wrong"
    right.write_text("the-bus-token\n")
    wrong.write_text("not-the-bus-token\n")
    done = d.cli("workflows", "put", workflow_file("e2e_many.yaml"))
    assert done.returncode == 0, done.stderr
    serve = d.start("serve", "serve", "--listen", d.bus, "--http", "127.0.0.1:0",
                    CORDTRIO_BUS_TOKEN="the-bus-token")
    worker = d.worker("w1", "--token-file", str(right), wait=False)
    serve.wait_for("ready:", timeout=30)
    worker.wait_for("ready:", timeout=30)
    intruder = d.worker("intruder", "--token-file", str(wrong), "--connect-timeout", "10",
                        wait=False)
    assert intruder.popen.wait(timeout=30) == 4
    assert "refused this client's token" in intruder.output()
    assert "not-the-bus-token" not in intruder.output() + serve.output()

    items = json.dumps({"items": [1, 2, 3], "sleep": 0})
    done = d.cli("runs", "submit", "e2e_many", "--input", items, "--wait", "--timeout", "40")
    assert done.returncode == 0, done.stderr + done.stdout
    executions = d.executions()
    assert "intruder" not in executions
    assert sum(executions["w1"].values()) >= 3
