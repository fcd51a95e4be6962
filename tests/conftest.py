"""Shared pytest fixtures: simulated datasets made once per session, the shared/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ../shared folder; tests using it skip where it does not exist."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not available (a user's clone has none)")
    return SHARED
