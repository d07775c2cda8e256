"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) through SimpleITK.

Array order is ITK's index order (x, y, z), i.e. SimpleITK's (z, y, x) numpy view transposed, so
``array[i, j, k]`` matches NIfTI. ITK geometry is LPS: affine = diag(-1, -1, 1) @ [direction *
spacing | origin]. A 3D image with one slice is a 2D Volume with its full affine; 2D Volumes are
written that way so oblique 2D geometry survives. The modality is stored in the metadata key
``medvae_modality``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging.atomic import first_line
from medvae_engine.imaging.modality import DECLARED_KEY
from medvae_engine.imaging.volume import MODALITIES, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MODALITY_KEY = "medvae_modality"
WRITABLE_SUFFIXES = (".mha", ".nrrd")


def read_itk(path: Path, *, frame: int | None = None) -> Volume:
    """Read an MHA/MHD/NRRD/NHDR image into a float32 Volume; 4D images need ``frame``."""
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable image ({first_line(exc)})") from None
    size = list(image.GetSize())
    ndim = image.GetDimension()
    while ndim > 3 and size[-1] == 1:
        image = _drop_last_axis(image, 0)
        size, ndim = list(image.GetSize()), image.GetDimension()
    frame_info = {}
    if ndim == 4:
        n_frames = size[3]
        if frame is None:
            raise InputError(
                f"{path}: image is 4D with {n_frames} frames; choose one with "
                f"frame=0..{n_frames - 1}"
            )
        if not 0 <= frame < n_frames:
            raise InputError(f"{path}: frame {frame} out of range 0..{n_frames - 1}")
        image = _drop_last_axis(image, frame)
        frame_info = {"frame": int(frame), "n_frames": int(n_frames)}
    elif ndim > 4:
        raise InputError(f"{path}: {ndim}D images are not supported (size {size})")
    elif frame is not None:
        raise InputError(f"{path}: image is not 4D, frame={frame} does not apply")
    if ndim < 2:
        raise InputError(f"{path}: image has size {size}, need 2D or 3D")
    array = _pixels(image, path)
    affine = _affine(image)
    converted = image.GetNumberOfComponentsPerPixel() > 1
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    metadata = {
        "source_path": str(Path(path).resolve()),
        "source_format": "itk",
        "original_dtype": image.GetPixelIDTypeAsString(),
        "original_shape": size,
        **frame_info,
    }
    if converted:
        metadata["converted_from_rgb"] = True
    declared = image.GetMetaData(MODALITY_KEY) if image.HasMetaDataKey(MODALITY_KEY) else ""
    if declared in MODALITIES:
        metadata[DECLARED_KEY] = True
    return Volume(array, affine, declared if declared in MODALITIES else "other", metadata)


def check_itk(volume: Volume, path: Path) -> None:
    """Refuse affines ITK cannot represent: zero-length or non-orthogonal (sheared) axes."""
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise OutputError(f"{path}: affine has a zero-length axis, cannot store it")
    direction = volume.affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise OutputError(
            f"{path}: affine is sheared (e.g. tilted slices); MHA/NRRD cannot store it, use NIfTI"
        )


def write_itk(volume: Volume, path: Path) -> None:
    """Write ``volume`` (see `check_itk`) as .mha or .nrrd: single files, so writes are atomic."""
    affine = LPS_TO_RAS @ volume.affine  # RAS -> LPS (the flip is its own inverse)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    array = volume.array if volume.ndim == 3 else volume.array[:, :, np.newaxis]
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.flatten()])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetMetaData(MODALITY_KEY, volume.modality)
    sitk.WriteImage(image, str(path), useCompression=True)


def _pixels(image: sitk.Image, path: Path) -> np.ndarray:
    """ITK-ordered (x, y[, z]) float32 pixels; multi-component (RGB) pixels are averaged."""
    try:
        view = sitk.GetArrayFromImage(image)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the pixel data ({first_line(exc)})") from None
    ndim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        view = view[..., :3].astype(np.float32).mean(axis=-1)
    return np.ascontiguousarray(np.transpose(view, tuple(range(ndim))[::-1]), dtype=np.float32)


def _affine(image: sitk.Image) -> np.ndarray:
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    lps = np.eye(4)
    lps[:ndim, :ndim] = direction * np.asarray(image.GetSpacing())
    lps[:ndim, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def _drop_last_axis(image: sitk.Image, index: int) -> sitk.Image:
    size = list(image.GetSize())
    extractor = sitk.ExtractImageFilter()
    extractor.SetSize(size[:-1] + [0])
    extractor.SetIndex([0] * (len(size) - 1) + [index])
    extractor.SetDirectionCollapseToStrategy(extractor.DIRECTIONCOLLAPSETOSUBMATRIX)
    return extractor.Execute(image)
