"""Fixtures for reader-study tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import write_study


@pytest.fixture
def small_study(tmp_path: Path) -> Path:
    """A 6-item study folder."""
    return write_study(tmp_path / "study", 6)
