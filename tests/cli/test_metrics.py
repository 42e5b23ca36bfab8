"""``/metrics`` content: counters fed by the engine hooks, rendered in Prometheus text."""

from __future__ import annotations

from cordtrio.cli.metrics import Histogram, ServeMetrics, bus_figures
from cordtrio.model import StepStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        h.observe(value)
    assert h.render("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1"} 3',
                             'x_bucket{le="+Inf"} 4', "x_sum 4.25", "x_count 4"]


def test_dispatch_to_finish_latency_and_counters() -> None:
    clock = FakeClock()
    m = ServeMetrics(clock)
    m.step_dispatched("r1", "a", "r1:a@1")
    clock.now = 0.3
    m.step_dispatched("r1", "a", "r1:a@2")  # a retry: latency counts from the last attempt
    clock.now = 0.5
    m.step_finished("r1", "a", StepStatus.SUCCEEDED)
    m.step_finished("r1", "gate", StepStatus.CANCELLED)  # never dispatched: no latency
    text = m.render({"running": 2, "succeeded": 5}, active_runs=2, redis_up=True)
    lines = text.splitlines()
    assert "cordtrio_up 1" in lines
    assert 'cordtrio_runs{status="running"} 2' in lines
    assert 'cordtrio_runs{status="succeeded"} 5' in lines
    assert "cordtrio_active_runs 2" in lines
    assert "cordtrio_steps_dispatched_total 2" in lines
    assert 'cordtrio_steps_finished_total{status="succeeded"} 1' in lines
    assert 'cordtrio_steps_finished_total{status="cancelled"} 1' in lines
    assert "cordtrio_step_result_latency_seconds_count 1" in lines
    assert 'cordtrio_step_result_latency_seconds_bucket{le="0.1"} 0' in lines
    assert 'cordtrio_step_result_latency_seconds_bucket{le="0.25"} 1' in lines
    assert text.endswith("\n")
    # every sample belongs to a declared family
    families = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert any(name == f or name.startswith(f + "_") for f in families), line


def test_redis_down_is_visible() -> None:
    text = ServeMetrics(FakeClock()).render({}, active_runs=0, redis_up=False)
    assert "cordtrio_up 0" in text.splitlines()


def test_the_bus_routers_figures_are_shown() -> None:
    class Router:  # the monitoring attributes of an NngRouter
        peer_count = 3
        pending_jobs = 5
        held_jobs = 2
        redelivered_jobs = 7
        lost_jobs = 1
        liveness_cuts = 4
        slow_consumers = 6
        auth_failures = 8
        forbidden_ops = 9

    text = ServeMetrics(FakeClock()).render({}, active_runs=0, redis_up=True,
                                            bus=bus_figures(Router()))
    lines = text.splitlines()
    for sample in ("cordtrio_bus_peers 3", "cordtrio_bus_pending_jobs 5",
                   "cordtrio_bus_held_jobs 2", "cordtrio_bus_redelivered_jobs_total 7",
                   "cordtrio_bus_lost_jobs_total 1", "cordtrio_bus_liveness_cuts_total 4",
                   "cordtrio_bus_slow_consumers_total 6", "cordtrio_bus_auth_failures_total 8",
                   "cordtrio_bus_forbidden_ops_total 9"):
        assert sample in lines
    assert "# TYPE cordtrio_bus_liveness_cuts_total counter" in lines
