"""Latent files: a NIfTI of the latent grid plus a JSON sidecar that restores the image on decode.

The NIfTI's affine puts each latent voxel over the centre of the block of image voxels it encodes,
so latents overlay the anatomy in any viewer. The sidecar holds everything ``decode`` needs: model
name and weights checksum, factor, normalisation, original shape and affine, padding, slice axis,
the input's size and sha256 (so dataset encoding resumes only over unchanged inputs), and the voxel
orders (3D-model latents are stored in RAS order, as the official tool encodes them;
``image_orientation`` says how to put the decoded volume back in the input's own order).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..imaging.grid import block_affine
from ..imaging.normalization import Normalization
from ..imaging.orientation import reorient, reoriented_affine, reoriented_shape
from ..version import __version__

FORMAT_VERSION = 2  # 2: orientation / image_orientation (absent in 1: the image's voxel order)


@dataclasses.dataclass
class Latent:
    """A latent grid (C, *spatial) aligned with the image axes, and the facts to decode it.

    For a 2D model applied slice-wise, the slice axis keeps its size (factor 1 along it); for a 3D
    model every axis is divided by the factor. ``orientation`` is the axis codes of the latent grid
    ("RAS" for 3D models) and ``image_orientation`` those of the input; None means the latent
    follows the image's own voxel order. ``image_shape`` and ``image_affine`` are the input's own.
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
    source: dict[str, Any] | None = None  # the input's identity (see codec.dataset.source_record)
    orientation: str | None = None
    image_orientation: str | None = None
    encoding: dict[str, Any] | None = None  # how it was made (pipeline.encoding_record); None in
    # sidecars written before 2026-12

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The image shape in the latent's voxel order (``padded_shape`` before padding)."""
        if self.orientation is None:
            return tuple(self.image_shape)
        return reoriented_shape(self.image_shape, self.image_orientation, self.orientation)

    @property
    def grid_affine(self) -> np.ndarray:
        """Image voxel index in the latent's voxel order -> world."""
        if self.orientation is None:
            return np.asarray(self.image_affine)
        return reoriented_affine(
            self.image_affine, self.image_shape, self.image_orientation, self.orientation
        )

    def in_image_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(array, affine) of the latent grid in the image's voxel order, to show beside it."""
        if self.orientation is None:
            return self.array, self.affine
        array = reorient(self.array, self.orientation, self.image_orientation)
        affine = reoriented_affine(
            self.affine, self.array.shape[1:], self.orientation, self.image_orientation
        )
        return array, affine

    def from_image_order(self, array: np.ndarray) -> np.ndarray:
        """The inverse of ``in_image_order`` for an array (C, *spatial): back to the latent's order."""
        if self.orientation is None:
            return array
        return reorient(array, self.image_orientation, self.orientation)

    @property
    def affine(self) -> np.ndarray:
        """Latent voxel index -> world: voxel j sits over voxels [f*j, f*j + f - 1] of the image
        grid in the latent's voxel order (``grid_affine``)."""
        return block_affine(self.grid_affine, self.factors)

    @property
    def storage_ratio(self) -> float:
        """Image voxels per latent value (e.g. 16 for f=4, C=1 in 2D)."""
        return float(np.prod(self.image_shape)) / float(self.array.size)

    def sidecar(self) -> dict[str, Any]:
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
            "orientation": self.orientation,
            "image_orientation": self.image_orientation,
            "padded_shape": list(self.padded_shape),
            "padding": [p - s for p, s in zip(self.padded_shape, self.grid_shape)],
            "metadata": self.metadata,
            "source": self.source,
            "encoding": self.encoding,
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
    orientations = (meta.get("orientation"), meta.get("image_orientation"))
    if orientations != (None, None) and not all(map(_valid_axcodes, orientations)):
        raise InputError(f"{side}: invalid orientation record {list(orientations)}")
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
        orientation=meta.get("orientation"),
        image_orientation=meta.get("image_orientation"),
        encoding=meta.get("encoding"),
    )


def _valid_axcodes(codes) -> bool:
    """True for three axis codes naming each of the L/R, P/A, I/S directions once (e.g. "LPS")."""
    if not isinstance(codes, str) or len(codes) != 3:
        return False
    directions = [next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1) for c in codes]
    return sorted(directions) == [0, 1, 2]
