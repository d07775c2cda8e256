"""Maps aligned voxel for voxel with the reference Volume (same shape and affine), for overlays.

Intensity convention: `difference` (test - reference), `abs_error` and the wavelet subband error
maps are in the image's own units (HU for CT); `local_psnr` (dB) and `local_ssim` are computed
on the [0, 1] mapping given by ``value_range`` (default: the reference's min and max);
`hallucination` labels (0 none, 1 hallucinated, 2 lost) use the same [0, 1] mapping for the noise
floor. Volumes are analysed slice by slice along ``axis`` (as 2D models see them); the subband
maps can use the 3D decomposition instead with ``subband_3d=True``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..imaging.volume import Volume
from .hallucination import hallucination
from .metrics import check_pair, local_psnr_map, reference_range, ssim_map, to_unit_range
from .wavelets import subband_error_maps

AFFINE_TOLERANCE = 1e-3  # mm


def check_geometry(
    reference: Volume, test: Volume, name: str, *, resample: bool = False
) -> Volume:
    """``test`` on the reference grid: as is if it already is, resampled if asked, else error."""
    same_shape = reference.shape == test.shape
    same_affine = np.allclose(reference.affine, test.affine, atol=AFFINE_TOLERANCE)
    if same_shape and same_affine:
        return test
    if not resample:
        what = (f"shape {test.shape} vs reference {reference.shape}" if not same_shape
                else "affine differs from the reference's")
        raise InputError(f"{name}: {what} (pass --resample to resample it onto the reference grid)")
    return resample_to(reference, test)


def resample_to(reference: Volume, moving: Volume, order: int = 1) -> Volume:
    """``moving`` resampled (linear by default) onto the reference's voxel grid via the affines."""
    if reference.ndim != moving.ndim:
        raise InputError(f"cannot resample a {moving.ndim}D image onto a {reference.ndim}D one")
    vox = np.linalg.inv(moving.affine) @ reference.affine
    n = reference.ndim
    matrix, offset = vox[:n, :n], vox[:n, 3]
    data = ndimage.affine_transform(
        np.asarray(moving.array, np.float64), matrix, offset, output_shape=reference.shape,
        order=order, mode="nearest",
    )
    return Volume(data.astype(np.float32), reference.affine.copy(), moving.modality,
                  dict(moving.metadata))


def _per_slice(fn, arrays: list[np.ndarray], axis: int | None) -> np.ndarray:
    if arrays[0].ndim == 2 or axis is None:
        return fn(*arrays)
    return np.stack(
        [fn(*[np.take(a, i, axis=axis) for a in arrays]) for i in range(arrays[0].shape[axis])],
        axis=axis,
    )


def compute_maps(
    reference: Volume,
    test: Volume,
    ae: Volume | None = None,
    *,
    k: float = 2.0,
    value_range: tuple[float, float] | None = None,
    axis: int = 2,
    subband_3d: bool = False,
    window: int = 7,
) -> dict[str, Volume]:
    """All overlay maps of ``test`` against ``reference`` as Volumes in the reference geometry.

    Keys: difference, abs_error, local_psnr, local_ssim, subband_<NAME> (ten 2D Haar subbands,
    or the 3D ones) and, with an AE reconstruction, hallucination (labels). ``test`` and ``ae``
    must already be on the reference grid (see `check_geometry`).
    """
    ref = np.asarray(reference.array, np.float64)
    tst = np.asarray(test.array, np.float64)
    check_pair(ref, tst)
    value_range = value_range or reference_range(ref)
    ref01, tst01 = to_unit_range(ref, value_range), to_unit_range(tst, value_range)
    slice_axis = axis if ref.ndim == 3 else None

    def as_volume(array: np.ndarray, kind: str) -> Volume:
        return reference.with_array(array.astype(np.float32), map=kind)

    maps = {
        "difference": as_volume(tst - ref, "difference"),
        "abs_error": as_volume(np.abs(tst - ref), "abs_error"),
        "local_psnr": as_volume(_per_slice(
            lambda r, t: local_psnr_map(r, t, 1.0, window), [ref01, tst01], slice_axis),
            "local_psnr"),
        "local_ssim": as_volume(_per_slice(ssim_map, [ref01, tst01], slice_axis), "local_ssim"),
    }
    sub_axis = None if ref.ndim == 2 or subband_3d else axis
    for name, err in subband_error_maps(ref, tst, axis=sub_axis).items():
        maps[f"subband_{name}"] = as_volume(err, f"subband_{name}")
    if ae is not None:
        ae01 = to_unit_range(np.asarray(ae.array, np.float64), value_range)
        check_pair(ref01, ae01, ("reference", "AE reconstruction"))
        labels = hallucination(ref01, tst01, ae01, k).labels
        maps["hallucination"] = Volume(labels, reference.affine.copy(), reference.modality,
                                       {**reference.metadata, "map": "hallucination"})
    return maps
