"""Corrupt data in process mode: a run whose key was spoiled ends ``failed`` naming the key
when ``serve`` meets it, and ``cordtrio`` commands meeting unreadable data print one line
naming the run or workflow and the key (exit status 6), never a traceback."""

from __future__ import annotations

import urllib.request
from typing import Any

import trio
from e2e_harness import Deployment, poll, read_run, submit_runs, workflow_file

from cordtrio.backends.redis import connect
from cordtrio.errors import CorruptDataError


def _raw(url: str, *commands: tuple[str, tuple[Any, ...]]) -> None:
    async def go() -> None:
        async with connect(url) as redis:
            for method, args in commands:
                await redis.redis.call("test", "", method, *args)

    trio.run(go)


def _status(d: Deployment, run_id: str) -> str | None:
    """The run's stored status; None while its key still holds what the test spoiled it
    with (the engine has not met it yet)."""
    try:
        return str(read_run(d.redis_url, run_id)["status"])
    except CorruptDataError:
        return None


def _one_line_error(done: Any, *names: str) -> str:
    assert done.returncode == 6, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return str(lines[0])


def test_a_corrupt_run_ends_failed_and_commands_print_one_line(
        deployment: Deployment) -> None:
    d = deployment
    assert d.cli("workflows", "put", workflow_file("e2e_approval.yaml")).returncode == 0
    serve = d.serve()
    d.worker("w1")
    spoiled, done = submit_runs(d.redis_url, "e2e_approval", 2)
    for run_id in (spoiled, done):
        poll(lambda rid=run_id: True if _status(d, rid) == "waiting" else None,
             f"run {run_id} to wait", timeout=30)
    assert d.cli("runs", "approve", done, "approve").returncode == 0
    poll(lambda: True if _status(d, done) == "succeeded" else None, "run to succeed")
    assert serve.stop() == 0

    key, done_key = f"wf:run:{spoiled}", f"wf:run:{done}"
    _raw(d.redis_url, ("delete", (key,)), ("rpush", (key, b"not", b"a", b"run")),
         ("hset", (done_key, "step:prepare", b"\x00\xff garbage")))
    serve = d.serve("serve2")  # recovery meets the spoiled waiting run
    poll(lambda: True if _status(d, spoiled) == "failed" else None,
         "the corrupt run to end failed", timeout=30)
    error = read_run(d.redis_url, spoiled)["error"]["message"]
    assert key in error and "wrong" in error.lower(), error
    port = d.http_port(serve)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        metrics = reply.read().decode().splitlines()
    assert 'cordtrio_runs{status="waiting"} 0' in metrics
    assert 'cordtrio_runs{status="failed"} 1' in metrics
    logged = [line for line in serve.output().splitlines() if spoiled in line]
    assert len(logged) == 1 and key in logged[0], serve.output()

    shown = d.cli("runs", "show", spoiled)  # readable again, as failed
    assert shown.returncode == 0 and "failed" in shown.stdout, shown.stdout + shown.stderr

    _one_line_error(d.cli("runs", "show", done), f"run {done}", done_key, "step:prepare")
    _one_line_error(d.cli("runs", "timeline", done), done_key)

    _raw(d.redis_url, ("set", ("wf:def:e2e_approval", b'{"id": "e2e_approval", "ste')))
    _one_line_error(d.cli("runs", "submit", "e2e_approval"), "workflow e2e_approval",
                    "wf:def:e2e_approval")
    _one_line_error(d.cli("workflows", "show", "e2e_approval"), "wf:def:e2e_approval")
    assert "Traceback" not in serve.output()
