"""Latent files: a NIfTI of the latent grid plus a JSON sidecar that restores the image on decode.

The NIfTI's affine puts each latent voxel over the centre of the block of image voxels it encodes,
so latents overlay the anatomy in any viewer. The sidecar holds everything ``decode`` needs: model
name and weights checksum, factor, normalisation, original shape and affine, padding, slice axis,
and the input's size and sha256 (so dataset encoding resumes only over unchanged inputs).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputError
from .imaging.atomic import atomic_write, atomic_write_text
from .imaging.normalization import Normalization

FORMAT_VERSION = 1


@dataclasses.dataclass
class Latent:
    """A latent grid (C, *spatial) aligned with the image axes, and the facts to decode it.

    For a 2D model applied slice-wise, the slice axis keeps its size (factor 1 along it); for a 3D
    model every axis is divided by the factor.
    """

    array: np.ndarray
    image_shape: tuple[int, ...]
    image_affine: np.ndarray
    padded_shape: tuple[int, ...]
    factors: tuple[int, ...]
    normalization: Normalization
    model: str
    spatial_dims: int
    axis: int | None = None
    weights_sha256: str | None = None
    weights_path: str | None = None
    modality: str = "other"
    projected: bool = False
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: dict[str, Any] | None = None  # the input's identity (see dataset_encode.source_record)

    @property
    def affine(self) -> np.ndarray:
        """Latent voxel index -> world: voxel j sits over image voxels [f*j, f*j + f - 1]."""
        scale = np.eye(4)
        for i, f in enumerate(self.factors):
            scale[i, i] = f
            scale[i, 3] = (f - 1) / 2.0
        return np.asarray(self.image_affine) @ scale

    @property
    def storage_ratio(self) -> float:
        """Image voxels per latent value (e.g. 16 for f=4, C=1 in 2D)."""
        return float(np.prod(self.image_shape)) / float(self.array.size)

    def sidecar(self) -> dict[str, Any]:
        from . import __version__

        return {
            "format": "medvae-latent",
            "format_version": FORMAT_VERSION,
            "engine_version": __version__,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "weights_path": self.weights_path,
            "spatial_dims": self.spatial_dims,
            "factors": list(self.factors),
            "axis": self.axis,
            "latent_channels": int(self.array.shape[0]),
            "projected": self.projected,
            "normalization": self.normalization.to_dict(),
            "modality": self.modality,
            "image_shape": list(self.image_shape),
            "image_affine": np.asarray(self.image_affine).tolist(),
            "padded_shape": list(self.padded_shape),
            "padding": [p - s for p, s in zip(self.padded_shape, self.image_shape)],
            "metadata": self.metadata,
            "source": self.source,
        }


def sidecar_path(path: str | Path) -> Path:
    """foo.nii.gz -> foo.json."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def save_latent(latent: Latent, path: str | Path) -> Path:
    """Write the latent NIfTI (spatial axes first, channels last) and its sidecar, each atomically."""
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise InputError(f"{path}: latent files must end in .nii.gz or .nii")
    data = np.moveaxis(np.asarray(latent.array, dtype=np.float32), 0, -1)
    image = nib.Nifti1Image(data, latent.affine)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = f"medvae latent {latent.model}"[:79].encode()
    atomic_write(path, lambda tmp: nib.save(image, str(tmp)))
    atomic_write_text(sidecar_path(path), json.dumps(latent.sidecar(), indent=2))
    return path


def load_latent(path: str | Path) -> Latent:
    """Read a latent NIfTI and its sidecar; InputError if either is missing or inconsistent."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise InputError(f"{path}: latent file not found")
    if not side.is_file():
        raise InputError(f"{path}: sidecar {side.name} not found (needed to decode)")
    try:
        meta = json.loads(side.read_text())
        data = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as e:
        raise InputError(f"{path}: unreadable latent file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != "medvae-latent":
        raise InputError(f"{side}: not a medvae latent sidecar")
    n_spatial = len(meta["image_shape"])
    if data.ndim == n_spatial:  # a single latent channel may be stored without the channel axis
        data = data[..., None]
    array = np.moveaxis(data, -1, 0)
    expected = tuple(p // f for p, f in zip(meta["padded_shape"], meta["factors"]))
    if array.shape[1:] != expected or array.shape[0] != meta["latent_channels"]:
        raise InputError(
            f"{path}: latent shape {array.shape} does not match its sidecar "
            f"({meta['latent_channels']}, {', '.join(map(str, expected))})"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{path}: latent contains NaN or Inf values")
    return Latent(
        array=array,
        image_shape=tuple(meta["image_shape"]),
        image_affine=np.asarray(meta["image_affine"], dtype=np.float64),
        padded_shape=tuple(meta["padded_shape"]),
        factors=tuple(meta["factors"]),
        normalization=Normalization.from_dict(meta["normalization"]),
        model=meta["model"],
        spatial_dims=int(meta["spatial_dims"]),
        axis=meta.get("axis"),
        weights_sha256=meta.get("weights_sha256"),
        weights_path=meta.get("weights_path"),
        modality=meta.get("modality", "other"),
        projected=bool(meta.get("projected", False)),
        metadata=meta.get("metadata", {}),
        source=meta.get("source"),
    )
