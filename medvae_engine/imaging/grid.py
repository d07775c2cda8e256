"""Affines of block grids: the coarser grid whose voxels each cover a block of another grid's
voxels (latents, downsampled LR images) and its inverse, the finer grid (super-resolution).

Voxel j of a grid coarser by f along an axis covers voxels [f j, f j + f - 1] of the fine grid, so
its centre sits at fine index f j + (f - 1) / 2: the axis column is multiplied by f and the origin
moves by (f - 1) / 2 fine voxels. The same formula with 1 / f gives the finer grid exactly back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def block_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """The affine of the grid coarser by ``factors[a]`` along each voxel axis a of ``affine``
    (1: unchanged; 1 / s: s times finer), voxel centres over their blocks' centres."""
    out = np.array(affine, dtype=np.float64, copy=True)
    for a, f in enumerate(factors):
        out[:3, 3] += out[:3, a] * (f - 1) / 2
        out[:3, a] = out[:3, a] * f
    return out


def axis_factors(ndim: int, axes: Sequence[int], factor: float) -> list[float]:
    """``factor`` along ``axes`` and 1 along the other of ``ndim`` axes (e.g. in-plane only)."""
    return [factor if a in axes else 1 for a in range(ndim)]
