"""`read_volume` and `write_volume`: one entry point for every supported file format.

The format comes from the suffix; a folder is a DICOM series and a file with an unknown suffix is
read as DICOM when it carries the ``DICM`` preamble. Every reader returns float32 in the image's own
units; this module resolves the modality, rejects empty and non-finite images, and drops identifying
metadata unless ``keep_phi``. Every file writer goes through `atomic_write`; `write_output`
also writes a DICOM series folder (`dicom_write`, a temporary folder renamed into place).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging import dicom, itk_formats, nifti, raster
from medvae_engine.imaging.atomic import atomic_write, full_suffix
from medvae_engine.imaging.deid import strip_phi
from medvae_engine.imaging.dicom_write import check_dicom_destination, write_dicom_series
from medvae_engine.imaging.modality import DECLARED_KEY, check_modality, resolve_modality
from medvae_engine.imaging.volume import Volume

READ_SUFFIXES = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".mha": "itk",
    ".mhd": "itk",
    ".nrrd": "itk",
    ".nhdr": "itk",
    ".png": "picture",
    ".jpg": "picture",
    ".jpeg": "picture",
    ".tif": "tiff",
    ".tiff": "tiff",
}
WRITERS: dict[str, Callable[[Volume, Path], None]] = {
    ".nii": nifti.write_nifti,
    ".nii.gz": nifti.write_nifti,
    ".mha": itk_formats.write_itk,
    ".nrrd": itk_formats.write_itk,
    ".png": raster.write_png,
    ".tif": raster.write_tiff,
    ".tiff": raster.write_tiff,
}
# Checks run before anything is written, so their errors name the real destination.
WRITE_CHECKS: dict[Callable[[Volume, Path], None], Callable[[Volume, Path], None]] = {
    itk_formats.write_itk: itk_formats.check_itk,
    raster.write_png: raster.check_png,
}


def detect_format(path: str | Path) -> str:
    """The reader a path needs: nifti, dicom, itk, picture or tiff; `InputError` if none fits."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    kind = file_format(path)
    if kind is None:
        known = ", ".join(sorted(READ_SUFFIXES))
        raise InputError(
            f"{path}: unknown image format '{full_suffix(path) or '(no suffix)'}' "
            f"(supported: {known}, DICOM files or series folders)"
        )
    return kind


def file_format(path: str | Path) -> str | None:
    """The reader an image file needs by its suffix or DICOM preamble; None for other files."""
    kind = READ_SUFFIXES.get(full_suffix(path))
    return "dicom" if kind is None and dicom.is_dicom_file(path) else kind


def read_volume(
    path: str | Path,
    *,
    frame: int | None = None,
    series_uid: str | None = None,
    modality: str = "auto",
    keep_phi: bool = False,
) -> Volume:
    """Read any supported image into a float32 `Volume` with a RAS affine and resolved modality."""
    requested = check_modality(modality)
    path = Path(path)
    kind = detect_format(path)
    if kind != "dicom" and series_uid is not None:
        raise InputError(f"{path}: series_uid applies to DICOM folders only")
    if kind == "dicom" and frame is not None:
        raise InputError(f"{path}: frame= applies to 4D NIfTI/MHA/NRRD images only")
    if kind == "nifti":
        volume = nifti.read_nifti(path, frame=frame)
    elif kind == "itk":
        volume = itk_formats.read_itk(path, frame=frame)
    elif kind == "dicom":
        volume = dicom.read_dicom(path, series_uid=series_uid, keep_phi=keep_phi)
    elif kind == "picture":
        volume = raster.read_picture(path)
    else:
        volume = raster.read_tiff(path)
    _check_voxels(volume.array, path)
    declared = volume.modality if volume.metadata.pop(DECLARED_KEY, False) else "unknown"
    volume.modality = resolve_modality(requested, declared, volume.array)
    if not keep_phi:
        volume.metadata = strip_phi(volume.metadata)
    return volume


def write_volume(
    volume: Volume,
    path: str | Path,
    *,
    dtype: np.dtype | str | None = None,
    png_range: tuple[float, float] | None = None,
) -> Path:
    """Write ``volume`` atomically; the suffix picks the format. Returns the path written.

    PNG takes integers: ``png_range`` (LO, HI) maps values to 0..255; without it, results of a
    PNG/JPEG input go back in its bit depth (`raster.png_pixels`) and other floats are refused.
    """
    path = Path(path)
    suffix = full_suffix(path)
    writer = WRITERS.get(suffix)
    if writer is None:
        known = ", ".join(sorted(WRITERS))
        raise OutputError(f"{path}: cannot write '{suffix or '(no suffix)'}' files (use {known})")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder, give a file name")
    if dtype is not None:
        array = _cast(volume.array, np.dtype(dtype), path)
    elif writer is raster.write_png:
        array = raster.png_pixels(volume, path, png_range)  # the PNG writer picks 8 or 16 bits
    else:
        array = np.asarray(volume.array, dtype=np.float32)
    to_write = Volume(array, volume.affine, volume.modality, volume.metadata)
    if writer in WRITE_CHECKS:
        WRITE_CHECKS[writer](to_write, path)
    return atomic_write(path, lambda tmp: writer(to_write, tmp))


def write_output(
    volume: Volume,
    path: str | Path,
    *,
    fmt: str = "auto",
    description: str = "MedVAE result",
    keep_phi: bool = False,
    png_range: tuple[float, float] | None = None,
) -> Path:
    """Write a result: a new DICOM series in the folder ``path`` for fmt "dicom", else by suffix
    (``png_range`` as for `write_volume`)."""
    check_output(path, fmt)
    if fmt == "auto":
        return write_volume(volume, path, png_range=png_range)
    return write_dicom_series(volume, path, description=description, keep_phi=keep_phi)


def check_output(path: str | Path, fmt: str = "auto") -> None:
    """Refuse a DICOM export target before any work: a file suffix, a file, a non-empty folder."""
    if fmt == "auto":
        return
    if fmt != "dicom":
        raise OutputError(f"{path}: unknown output format '{fmt}' (auto or dicom)")
    if full_suffix(path) in WRITERS:
        raise OutputError(f"{path}: --format dicom writes a series folder; give a folder name "
                          f"without the '{full_suffix(path)}' suffix")
    check_dicom_destination(Path(path))


def _check_voxels(array: np.ndarray, path: Path) -> None:
    if array.size == 0:
        raise InputError(f"{path}: image is empty (shape {array.shape})")
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{path}: contains {bad} NaN/Inf voxels")


def _cast(array: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """``array`` as ``dtype``; integers are rounded and must fit the type's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = np.round(np.asarray(array, dtype=np.float64))
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            raise OutputError(
                f"{path}: values {rounded.min():.6g}..{rounded.max():.6g} do not fit {dtype}"
            )
        return rounded.astype(dtype)
    return np.asarray(array, dtype=dtype)
