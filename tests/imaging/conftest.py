"""Fixtures of the imaging tests: real DICOM series and files copied into tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from imaging_samples import copy_series, dicom_file


@pytest.fixture
def ct_series_dir(tmp_path: Path) -> Path:
    """pydicom's real 5-slice CT series under random file names and scrambled InstanceNumbers."""
    folder = tmp_path / "ct_series"
    copy_series(folder)
    return folder


@pytest.fixture
def ct_small_copy(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    shutil.copyfile(dicom_file("CT_small.dcm"), path)
    return path
