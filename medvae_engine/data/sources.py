"""Image references: what a data source (file, folder, CSV list, ``builtin:`` name) stands for.

``builtin:`` names reach the real images bundled with pydicom, pydicom-data, nilearn, dipy and
nibabel through the packages' own APIs. Training, SR training, CAD and the benchmarks read their
images through these references.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.testing import data_path

from ..errors import ConfigError, InputError
from ..imaging.io import read_volume
from ..imaging.normalization import fit_normalization
from .discovery import find_images
from .files import IMAGE_SUFFIXES

NIBABEL_FILES = {"example4d": "example4d.nii.gz", "anatomical": "anatomical.nii"}


@dataclasses.dataclass
class SourceSpec:
    """A data source: a file, folder, CSV list or ``builtin:`` name (a plain string is its path)."""

    path: str
    frame: int | None = None  # 4D images: which frame
    axes: list[int] | None = None  # volume axes 2D slices are taken along (default data.axes)
    modality: str = "auto"  # auto, ct, mri, xray, other
    series_uid: str | None = None  # DICOM folders holding several series
    # part of the image used, per array axis [start, stop) as fractions of its length (null: all);
    # lets one half of an image train while the other half is held out
    region: list[list[float] | None] | None = None


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image to read: a file (or DICOM folder) plus how to read and slice it."""

    path: Path
    frame: int | None
    axes: tuple[int, ...]
    modality: str
    series_uid: str | None
    label: str
    region: tuple[tuple[float, float] | None, ...] | None = None  # fractions per array axis

    @property
    def key(self) -> tuple[str, int | None]:
        return (str(self.path.resolve()), self.frame)


DIPY_FILES = {"S0_10slices": "S0_10", "S0_10": "S0_10", "aniso_vox": "aniso_vox"}


def resolve_builtin(name: str) -> Path:
    """The file behind ``builtin:<package>/<name>``, found through the package's own API."""
    package, _, item = name.partition("/")
    path = None
    try:
        if package in ("pydicom", "pydicom-data"):
            from pydicom.data import get_testdata_file  # optional test-data package

            found = get_testdata_file(item)
            path = Path(found) if found else None
        elif package == "nilearn" and item == "mni152":
            from nilearn.datasets import MNI152_FILE_PATH  # optional data package

            path = Path(MNI152_FILE_PATH)
        elif package == "dipy" and item in DIPY_FILES:
            from dipy.data import get_fnames  # optional data package

            path = Path(get_fnames(name=DIPY_FILES[item]))
        elif package == "nibabel":
            path = Path(data_path) / NIBABEL_FILES.get(item, item)
    except ImportError as e:
        raise ConfigError(f"builtin:{name}: needs the {e.name} package") from None
    if path is None or not path.exists():
        raise ConfigError(
            f"builtin:{name}: unknown or missing (known: pydicom/<test file>, nilearn/mni152, "
            f"dipy/S0_10slices, dipy/aniso_vox, nibabel/example4d, nibabel/anatomical)"
        )
    return path


def expand_source(spec: SourceSpec, default_axes: Sequence[int],
                  base_dir: str | Path) -> list[ImageRef]:
    """The images one source stands for (relative paths are relative to ``base_dir``)."""
    axes = tuple(spec.axes if spec.axes is not None else default_axes)
    region = _region_tuple(spec.region)
    if spec.path.startswith("builtin:"):
        path = resolve_builtin(spec.path.removeprefix("builtin:"))
        return [ImageRef(path, spec.frame, axes, spec.modality, spec.series_uid,
                         _region_label(spec.path, region), region)]
    root = Path(spec.path).expanduser()
    root = root if root.is_absolute() else Path(base_dir) / root
    if not root.exists():
        raise ConfigError(f"{root}: data source not found")
    try:
        found = find_images([root])
    except InputError as e:
        raise ConfigError(str(e)) from None
    if root.is_dir():
        found.sort(key=lambda f: f.relative.as_posix())  # a CSV keeps its own order
    if not found:
        raise ConfigError(f"{root}: data folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    refs = []
    for f in found:
        if not f.path.exists():
            raise ConfigError(f"{root}: listed image {f.path} not found")
        label = spec.path if len(found) == 1 and f.path == root else str(f.path)
        refs.append(ImageRef(f.path, f.frame if f.frame is not None else spec.frame, axes,
                             f.modality or spec.modality, spec.series_uid,
                             _region_label(label, region), region))
    return refs


def _region_tuple(region: list | None) -> tuple | None:
    return None if region is None else tuple(None if b is None else tuple(b) for b in region)


def _region_label(label: str, region: tuple | None) -> str:
    if region is None:
        return label
    return label + "[" + ", ".join(":" if b is None else f"{b[0]:g}:{b[1]:g}" for b in region) + "]"


def load_image(ref: ImageRef) -> np.ndarray:
    """Read one image and map it to model space [-1, 1] with the engine's modality normalisation."""
    volume = read_volume(ref.path, frame=ref.frame, series_uid=ref.series_uid,
                         modality=ref.modality)
    norm = fit_normalization(volume.array, volume.modality)
    array = norm.forward(volume.array)
    if ref.region is not None:  # normalised on the whole image: a region's values match it
        array = array[region_slices(ref.region, array.shape, ref.path)]
    return np.ascontiguousarray(array, dtype=np.float32)


def region_slices(region: tuple, shape: tuple[int, ...], name: object) -> tuple[slice, ...]:
    """The pixel slices of a region (per axis None or (start, stop) fractions) in an image of
    this shape; ``name`` (the file) goes into the error."""
    if len(region) != len(shape):
        raise ConfigError(f"{name}: region lists {len(region)} axes, the image has "
                          f"{len(shape)} (shape {tuple(shape)})")
    out = []
    for b, n in zip(region, shape, strict=True):
        start, stop = (0, n) if b is None else (round(b[0] * n), round(b[1] * n))
        if stop <= start:
            raise ConfigError(f"{name}: region {list(b)} holds no pixel of an axis of length {n}")
        out.append(slice(start, stop))
    return tuple(out)


def regions_overlap(a: ImageRef, b: ImageRef) -> bool:
    """Whether two references to the same image can share a pixel (no region: the whole image)."""
    return a.key == b.key and not regions_disjoint(a.region, b.region)


def regions_disjoint(a: tuple | None, b: tuple | None) -> bool:
    """Whether two regions of one image share no pixel: their ranges part on some axis."""
    if a is None or b is None or len(a) != len(b):
        return False
    return any(x is not None and y is not None and (x[1] <= y[0] or y[1] <= x[0])
               for x, y in zip(a, b, strict=True))
