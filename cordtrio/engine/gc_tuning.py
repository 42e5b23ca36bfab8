"""The cyclic garbage collector tuned for a long-lived engine (``open_engine(tune_gc=...)``).

A busy engine allocates many short-lived container objects per step (envelopes, effects,
decoded packets); with CPython's default generation-0 threshold (700) the collector runs
every few steps and walks everything young, and every full collection walks the whole heap
— the modules, plans and stored runs of start-up included. While at least one engine with
``tune_gc=True`` is open: generation 0 is collected every ``GEN0_THRESHOLD`` allocations,
and what exists once the engine has started (``freeze_startup``) is moved out of the
collector's sight (``gc.freeze``). When the last such engine closes, the thresholds are
restored and the frozen objects handed back (``gc.unfreeze``). Nothing is disabled: cycles
are still collected, just less often.
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
            gc.unfreeze()


def freeze_startup(enabled: bool = True) -> None:
    """Move every object alive now into the permanent generation (after start-up)."""
    if enabled:
        gc.freeze()


__all__ = ["GEN0_THRESHOLD", "freeze_startup", "long_lived_gc"]
