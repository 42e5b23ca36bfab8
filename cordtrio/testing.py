"""Test doubles for users' own tests (see docs/testing.md)."""

from __future__ import annotations

from .engine.clock import TrioWallClock

__all__ = ["TrioWallClock"]
