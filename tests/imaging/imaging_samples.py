"""Real medical files for the imaging tests (all offline: pydicom, pydicom-data, nibabel)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pydicom
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

CT_SERIES_FOLDER = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"


def dicom_file(name: str) -> Path:
    """A real DICOM file shipped with pydicom or pydicom-data."""
    return Path(get_testdata_file(name))


def nibabel_file(name: str) -> Path:
    """A real NIfTI file from nibabel's test data."""
    return Path(data_path) / name


def copy_series(target: Path, seed: int = 0) -> list[Path]:
    """Copy pydicom's real 5-slice CT series under random names with scrambled InstanceNumbers."""
    target.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = sorted(CT_SERIES_FOLDER.iterdir())
    numbers = list(range(1, len(sources) + 1))
    rng.shuffle(numbers)
    written = []
    for source, number in zip(sources, numbers, strict=True):
        ds = pydicom.dcmread(source)
        ds.InstanceNumber = number
        path = target / f"{rng.getrandbits(32):08x}"
        ds.save_as(path)
        written.append(path)
    return written


def files_in(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden temporary files included."""
    return sorted(os.listdir(folder))
