"""cordtrio's benchmark harness (``python -m benchmarks``; see docs/benchmarks.md).

Modules: ``workloads`` (W1–W5 and the no-op handlers), ``backends`` (memory, redis,
redis-nng sessions), ``measure`` (one sample and its figures), ``report`` (tables, JSON,
ratios), ``plot`` (the PNG), ``worker_proc`` (the worker process of ``redis-nng``),
``peers`` (Celery, Prefect).
"""
