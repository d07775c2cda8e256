"""NIfTI (.nii, .nii.gz) reading and writing through nibabel.

Array order is nibabel's (i, j, k) and the affine is ``img.affine`` (sform, else qform). A 2D
image, or a 3D image whose last axis has length 1, is a 2D Volume with the full affine kept; 2D
Volumes are written as (X, Y, 1). The modality travels in the header's ``descrip`` field as
``medvae modality=<name>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from medvae_engine.errors import InputError
from medvae_engine.imaging.atomic import first_line
from medvae_engine.imaging.modality import DECLARED_KEY
from medvae_engine.imaging.volume import MODALITIES, Volume

_DESCRIP = re.compile(r"medvae modality=(\w+)")


def read_nifti(path: Path, *, frame: int | None = None) -> Volume:
    """Read a NIfTI file into a float32 Volume; 4D images need ``frame`` to pick one 3D volume."""
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise InputError(f"{path}: not a readable NIfTI file ({first_line(exc)})") from None
    squeezed = _drop_trailing_singletons(shape)
    if len(squeezed) > 4:
        raise InputError(f"{path}: {len(squeezed)}D images are not supported (shape {shape})")
    if len(squeezed) < 2:
        raise InputError(f"{path}: image has shape {shape}, need 2D or 3D")
    n_frames = squeezed[3] if len(squeezed) == 4 else None
    _check_frame(path, frame, n_frames)
    try:
        proxy = img.dataobj
        if n_frames is not None:
            data = np.asarray(proxy[..., frame], dtype=np.float32)
        else:
            data = np.asarray(proxy, dtype=np.float32)
    except Exception as exc:  # truncated or corrupt data block
        raise InputError(f"{path}: cannot read the NIfTI voxel data ({first_line(exc)})") from None
    data = data.reshape(squeezed[:3] if n_frames is not None else squeezed)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    metadata = {
        "source_path": str(Path(path).resolve()),
        "source_format": "nifti",
        "original_dtype": str(img.get_data_dtype()),
        "original_shape": list(shape),
    }
    if n_frames is not None:
        metadata.update(frame=int(frame), n_frames=int(n_frames))
    modality = _declared_modality(img)
    if modality is not None:
        metadata[DECLARED_KEY] = True
    return Volume(np.ascontiguousarray(data), img.affine, modality or "other", metadata)


def write_nifti(volume: Volume, path: Path) -> None:
    """Write ``volume`` with its array's dtype to ``path`` (.nii or .nii.gz decides compression)."""
    array = volume.array if volume.ndim == 3 else volume.array[:, :, np.newaxis]
    img = nib.Nifti1Image(array, volume.affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"medvae modality={volume.modality}".encode()
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    nib.save(img, str(path))


def _declared_modality(img: nib.Nifti1Image) -> str | None:
    descrip = img.header.get("descrip") if hasattr(img.header, "get") else None
    text = bytes(np.asarray(descrip).item()).decode("latin-1") if descrip is not None else ""
    match = _DESCRIP.search(text)
    if match and match.group(1) in MODALITIES:
        return match.group(1)
    return None


def _drop_trailing_singletons(shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _check_frame(path: Path, frame: int | None, n_frames: int | None) -> None:
    if n_frames is None:
        if frame is not None:
            raise InputError(f"{path}: image is not 4D, frame={frame} does not apply")
        return
    if frame is None:
        raise InputError(
            f"{path}: image is 4D with {n_frames} frames; choose one with frame=0..{n_frames - 1}"
        )
    if not 0 <= frame < n_frames:
        raise InputError(f"{path}: frame {frame} out of range 0..{n_frames - 1}")
