"""The Trio shell: supervisor, per-run tasks, timers; it executes the core's effects."""

from ..clock import SystemClock, TrioWallClock
from .embedding import run_workflow, serve_engine
from .supervisor import Engine, open_engine

__all__ = ["Engine", "SystemClock", "TrioWallClock", "open_engine", "run_workflow",
           "serve_engine"]
