"""``cordtrio serve`` as a process: health, metrics, signals and exit statuses."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

from e2e_harness import Deployment


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_metrics_and_clean_stop_on_sigterm(deployment: Deployment) -> None:
    serve = deployment.serve()
    port = deployment.http_port(serve)
    status, body = _get(port, "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "redis": "up", "waiting_calls": 0,
                                "engine": "ready", "active_runs": 0, "persistence": "none"}
    status, text = _get(port, "/metrics")
    assert status == 200
    lines = text.splitlines()
    assert "cordtrio_up 1" in lines
    assert 'cordtrio_runs{status="running"} 0' in lines
    assert "# TYPE cordtrio_step_result_latency_seconds histogram" in lines
    assert _get(port, "/nope")[0] == 404

    deployment.redis.stop()  # Redis gone: unhealthy, but the service keeps running
    status, body = _get(port, "/health")
    assert status == 503 and json.loads(body)["redis"] == "down"
    assert serve.popen.poll() is None

    assert serve.stop(signal.SIGTERM) == 0
    assert "SIGTERM: stopping" in serve.output()


def test_sigint_stops_cleanly_too(deployment: Deployment) -> None:
    serve = deployment.serve()
    assert serve.stop(signal.SIGINT) == 0
    assert "Traceback" not in serve.output()


def test_worker_stops_on_sigterm_and_sigint(deployment: Deployment) -> None:
    deployment.serve(wait=False)
    workers = {sig: deployment.worker(f"w-{sig.name}", wait=False)
               for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, worker in workers.items():
        worker.wait_for("ready:", timeout=30)
        assert worker.stop(sig) == 0
        assert f"{sig.name}: stopping" in worker.output()
        assert "Traceback" not in worker.output()


def test_worker_without_a_bus_gives_up_with_status_4(deployment: Deployment) -> None:
    worker = deployment.start("lonely", "worker", "--connect", deployment.bus, "--handlers",
                              "examples.deploy_handlers", "--connect-timeout", "0.5")
    assert worker.popen.wait(timeout=30) == 4
    assert deployment.bus in worker.output()
