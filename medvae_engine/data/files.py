"""Which files are images: the one suffix table (the imaging readers' own) and name matching."""

from __future__ import annotations

from pathlib import Path

from ..imaging.atomic import full_suffix
from ..imaging.io import READ_SUFFIXES

IMAGE_SUFFIXES = tuple(READ_SUFFIXES)  # every suffix read_volume reads
VOLUME_SUFFIXES = tuple(s for s, kind in READ_SUFFIXES.items() if kind in ("nifti", "dicom", "itk"))


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix a reader handles (``scan.nii.gz``, ``IM1.dcm``, ``x.png``)."""
    return not path.name.startswith(".") and full_suffix(path) in READ_SUFFIXES


def image_stem(path: Path) -> str:
    """The name without its image suffix (scan01.nii.gz -> scan01): the key that matches one
    case's files across folders; folders (DICOM series) keep their name."""
    suffix = full_suffix(path)
    if suffix in READ_SUFFIXES and not path.is_dir():
        return path.name[: -len(suffix)]
    return path.name
