"""Fixtures of the nng tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def url(tmp_path: Path) -> str:
    """An ipc:// address in the test's own directory."""
    return f"ipc://{tmp_path}/bus.ipc"
