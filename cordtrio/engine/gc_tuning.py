"""The cyclic garbage collector tuned for a long-lived engine (``open_engine(tune_gc=...)``),
and for a worker (``open_worker(tune_gc=...)``, ``serve_worker``: same counting, same
thresholds; a worker allocates a few dozen short-lived objects per job).

A busy engine allocates many short-lived container objects per step (envelopes, effects,
decoded packets); with CPython's default generation-0 threshold (700) the collector runs
every few steps and walks everything young. While at least one engine with
``tune_gc=True`` is open, generation 0 is collected every ``GEN0_THRESHOLD`` allocations;
when the last such engine closes, the thresholds are restored. Nothing is disabled:
cycles are still collected, just less often.

Nothing is frozen out of the collector's sight (``gc.freeze``): what is alive when an
engine starts includes the garbage of whatever ran before (an earlier engine, in a process
that opens engine after engine: tests, simulations, restarts), and frozen garbage is never
freed while an engine is open, nor soon after (handed back, it does not count towards a
full collection) — such a process grew by every engine's leftovers. Collecting before
freezing costs a full collection per engine start; freezing bought nothing measurable on
W1 or W4.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 50000

_open = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def long_lived_gc(enabled: bool = True) -> Iterator[None]:
    """Raise the generation-0 threshold while the block runs (see the module docstring)."""
    global _open, _saved
    if not enabled:
        yield
        return
    if _open == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(max(GEN0_THRESHOLD, _saved[0]), *_saved[1:])
    _open += 1
    try:
        yield
    finally:
        _open -= 1
        if _open == 0 and _saved is not None:
            gc.set_threshold(*_saved)


__all__ = ["GEN0_THRESHOLD", "long_lived_gc"]
