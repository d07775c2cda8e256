"""`Volume`: a grayscale image or volume together with its geometry, modality and metadata."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MODALITIES = ("ct", "mri", "xray", "other")


@dataclasses.dataclass
class Volume:
    """A 2D image (ndim 2) or 3D volume (ndim 3) in the file's voxel order.

    ``affine`` is always 4x4 and maps voxel indices (i, j[, k]) to RAS world millimetres, as in
    NIfTI. For a 2D image the third column is the slice normal scaled by the slice thickness.
    ``array`` holds intensities in the image's own units (HU for CT).
    """

    array: np.ndarray
    affine: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))
    modality: str = "other"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim not in (2, 3):
            raise ValueError(f"Volume must be 2D or 3D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in norms[: self.ndim])

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (RAS mm) of the centre of voxel 0."""
        return tuple(float(v) for v in self.affine[:3, 3])

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """A new Volume with the same geometry and modality and ``array`` in place of the data."""
        if tuple(np.shape(array)) != self.shape:
            raise ValueError(f"shape {np.shape(array)} differs from the volume's {self.shape}")
        return Volume(array, self.affine.copy(), self.modality, {**self.metadata, **metadata})
