"""Voxel order by axis codes: volumes to RAS and back, by axis permutations and flips only.

The official 3D loaders apply MONAI ``Orientation(axcodes="RAS")`` before encoding, so 3D models
see RAS voxel order. This is the same nibabel orientation algebra: exact, no resampling, and the
affine changes so every voxel keeps its place in world space.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

MODEL_ORIENTATION = "RAS"


def axcodes(affine: np.ndarray) -> str | None:
    """Axis codes (e.g. "LPS") of a 3D voxel grid's affine; None if an axis has no direction."""
    codes = nio.aff2axcodes(np.asarray(affine, dtype=np.float64))
    return None if None in codes else "".join(codes)


def _transform(source: str, target: str) -> np.ndarray:
    return nio.ornt_transform(nio.axcodes2ornt(tuple(source)), nio.axcodes2ornt(tuple(target)))


def reorient(array: np.ndarray, source: str, target: str) -> np.ndarray:
    """``array`` (spatial axes last three or only) from voxel order ``source`` to ``target``."""
    if source == target:
        return array
    lead = array.ndim - 3
    moved = np.moveaxis(array, range(lead), range(-lead, 0)) if lead else array
    out = nio.apply_orientation(moved, _transform(source, target))
    return np.ascontiguousarray(np.moveaxis(out, range(-lead, 0), range(lead)) if lead else out)


def reoriented_shape(shape: tuple[int, ...], source: str, target: str) -> tuple[int, ...]:
    """The shape of a grid of ``shape`` in ``source`` order once put in ``target`` order."""
    order = _transform(source, target)[:, 0].astype(int)
    out = [0, 0, 0]
    for axis, new_axis in enumerate(order):
        out[new_axis] = shape[axis]
    return tuple(out)


def reoriented_affine(
    affine: np.ndarray, shape: tuple[int, ...], source: str, target: str
) -> np.ndarray:
    """The affine of the grid of ``shape`` (``source`` order) once put in ``target`` order."""
    if source == target:
        return np.asarray(affine, dtype=np.float64).copy()
    return np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(
        _transform(source, target), shape
    )
