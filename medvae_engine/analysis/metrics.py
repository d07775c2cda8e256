"""Distortion metrics on [0, 1] images and volumes: PSNR, SSIM, MS-SSIM, local maps, regions.

Conventions (FACTS section 2): every metric compares arrays mapped to [0, 1] with data range 1.
Images in physical units (HU, MRI signal) are mapped with `to_unit_range`, which uses the
*reference's* range (or an explicit window such as a CT window) for both reference and test, so the
same linear map applies to both and the test cannot rescale itself into agreement.
SSIM is scikit-image's ``structural_similarity`` with the Gaussian window of Wang et al. (sigma
1.5, truncated at 3.5 sigma = 11 taps, K1 = 0.01, K2 = 0.03, population covariances:
``gaussian_weights=True, use_sample_covariance=False``). MS-SSIM uses the standard five scales
and weights with 'valid' 11-tap Gaussian filtering, as pytorch-msssim does: the differentiable
implementation of ``msssim`` that the training loss uses too, here in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from ..errors import InputError
from .msssim import K1, K2, SSIM_SIGMA, SSIM_WIN, scales_that_fit
from .msssim import ms_ssim as torch_ms_ssim

Box = Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A metric that could not be computed, with the reason (never a made-up number)."""

    reason: str

    def to_json(self) -> dict:
        return {"available": False, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class MsSsimResult:
    """MS-SSIM value with the number of scales used and a note when fewer than five fit."""

    value: float
    scales: int
    note: str = ""


def to_unit_range(
    array: np.ndarray, value_range: tuple[float, float], *, clip: bool = True
) -> np.ndarray:
    """Map ``array`` linearly so that ``value_range`` = (lo, hi) becomes [0, 1] (float64).

    Use the reference's (min, max), a given data range or a CT window as ``value_range`` and the
    same one for every image compared with that reference. ``clip`` keeps results in [0, 1] as
    the papers' evaluation does (outputs are clipped before scoring). A constant reference
    (lo == hi) is only shifted, unclipped, so any difference from it stays visible.
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    a = np.asarray(array, dtype=np.float64)
    if hi <= lo:
        return a - lo
    out = (a - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0) if clip else out


def reference_range(reference: np.ndarray) -> tuple[float, float]:
    """(min, max) of the reference: the default [0, 1] mapping for images in physical units."""
    r = np.asarray(reference)
    return float(r.min()), float(r.max())


def check_pair(reference: np.ndarray, test: np.ndarray, names: tuple[str, str] = ("", "")) -> None:
    """Raise InputError when shapes differ or either array holds NaN or Inf."""
    ref_name, test_name = names[0] or "reference", names[1] or "test"
    if np.shape(reference) != np.shape(test):
        raise InputError(
            f"{test_name}: shape {np.shape(test)} differs from {ref_name}'s {np.shape(reference)}"
        )
    for name, a in ((ref_name, reference), (test_name, test)):
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}: contains NaN or Inf values")


def region_mask(
    shape: Sequence[int], mask: np.ndarray | None = None, boxes: Sequence[Box] | None = None
) -> np.ndarray | None:
    """Boolean region from a mask and/or boxes (each box: one (start, stop) per axis); None = all.

    Boxes are unioned; with both a mask and boxes the region is their intersection (a lesion mask
    inside a box of interest). Use ``~region`` for the background.
    """
    if mask is None and not boxes:
        return None
    region = np.ones(tuple(shape), bool) if mask is None else np.asarray(mask, bool).copy()
    if region.shape != tuple(shape):
        raise InputError(f"mask shape {region.shape} differs from image shape {tuple(shape)}")
    if boxes:
        in_boxes = np.zeros(tuple(shape), bool)
        for box in boxes:
            if len(box) != len(shape):
                raise InputError(f"box {box} needs one (start, stop) per axis of {tuple(shape)}")
            in_boxes[tuple(slice(int(a), int(b)) for a, b in box)] = True
        region &= in_boxes
    if not region.any():
        raise InputError("the mask/boxes select no voxel")
    return region


def _select(a: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    return a if region is None else a[region]


def mse(reference: np.ndarray, test: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared error, optionally within a boolean region."""
    d = np.asarray(test, np.float64) - np.asarray(reference, np.float64)
    return float(np.mean(_select(d * d, region)))


def psnr_from_mse(err: float, data_range: float = 1.0) -> float:
    """10 log10(range^2 / MSE) in dB; inf for identical images."""
    if err == 0:
        return math.inf
    if data_range == 0:
        return -math.inf
    return float(10.0 * np.log10(data_range**2 / err))


def psnr(
    reference: np.ndarray,
    test: np.ndarray,
    data_range: float = 1.0,
    region: np.ndarray | None = None,
) -> float:
    """PSNR in dB of ``test`` against ``reference`` (both in [0, 1] by default); inf if equal."""
    return psnr_from_mse(mse(reference, test, region), data_range)


def _window_fits(shape: Sequence[int]) -> int:
    """An odd ``win_size`` that passes scikit-image's size check: with Gaussian weights the
    filter ignores it (11 taps from sigma and truncate), it only sets the border skimage skips."""
    side = min(shape)
    return SSIM_WIN if side >= SSIM_WIN else side - (1 - side % 2)


def _skimage_ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> tuple[float, np.ndarray]:
    """(scikit-image's mean SSIM, the SSIM map) in float64 with Wang et al.'s Gaussian window."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(test, np.float64)
    return structural_similarity(
        x, y, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
        use_sample_covariance=False, K1=K1, K2=K2, win_size=_window_fits(x.shape), full=True,
    )


def ssim_map(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Local SSIM at every pixel/voxel (same shape as the input; 2D or 3D Gaussian window)."""
    return _skimage_ssim(reference, test, data_range)[1]


def ssim(
    reference: np.ndarray,
    test: np.ndarray,
    data_range: float = 1.0,
    region: np.ndarray | None = None,
) -> float:
    """Mean SSIM (scikit-image's); over the whole image it skips the 5-pixel border as skimage
    does, along axes longer than 10 only (a thin slab keeps all its slices).

    Within a region the SSIM map is averaged over the region's voxels (border included).
    """
    mean, smap = _skimage_ssim(reference, test, data_range)
    if region is not None:
        return float(smap[region].mean())
    if min(smap.shape) >= SSIM_WIN:
        return float(mean)
    pad = (SSIM_WIN - 1) // 2
    inner = tuple(slice(pad, s - pad) if s > 2 * pad else slice(None) for s in smap.shape)
    return float(smap[inner].mean())


def ms_ssim(
    reference: np.ndarray, test: np.ndarray, data_range: float = 1.0, scales: int = 5
) -> MsSsimResult | Unavailable:
    """Multi-scale SSIM (Wang 2003) on a 2D image or 3D volume (``msssim.ms_ssim`` in float64).

    The five standard scales need every side > 160 voxels. Smaller images use the largest number
    of scales that fits (weights renormalised, noted in the result); below 11 voxels per side
    MS-SSIM is unavailable.
    """
    x = torch.from_numpy(np.asarray(reference, np.float64))
    y = torch.from_numpy(np.asarray(test, np.float64))
    fit = scales_that_fit(x.shape, scales)
    if fit == 0:
        return Unavailable(f"MS-SSIM needs every side > {SSIM_WIN - 1}, got shape {tuple(x.shape)}")
    with torch.no_grad():
        value = float(torch_ms_ssim(x[None, None], y[None, None], data_range, scales)[0])
    note = "" if fit == scales else (
        f"{fit} of {scales} scales: the standard 5 need every side > 160, shape is "
        f"{np.shape(reference)}"
    )
    return MsSsimResult(value, fit, note)


def local_psnr_map(
    reference: np.ndarray, test: np.ndarray, data_range: float = 1.0, window: int = 7
) -> np.ndarray:
    """PSNR (dB) over a sliding ``window`` box at each voxel, capped at 100 dB where error is 0."""
    d = np.asarray(test, np.float64) - np.asarray(reference, np.float64)
    local_mse = ndimage.uniform_filter(d * d, size=window, mode="reflect")
    floor = data_range**2 * 1e-10
    return 10.0 * np.log10(data_range**2 / np.maximum(local_mse, floor))


def slicewise(
    metric: Callable[..., float],
    reference: np.ndarray,
    test: np.ndarray,
    axis: int = 0,
    region: np.ndarray | None = None,
    **kwargs,
) -> list[float]:
    """``metric`` on each 2D slice of two volumes along ``axis`` (slices outside region: nan)."""
    out = []
    for i in range(reference.shape[axis]):
        r = np.take(reference, i, axis=axis)
        t = np.take(test, i, axis=axis)
        sub = None if region is None else np.take(region, i, axis=axis)
        if sub is not None and not sub.any():
            out.append(math.nan)
            continue
        out.append(metric(r, t, region=sub, **kwargs))
    return out


def mean_finite(values: list[float]) -> float:
    """Mean over slices ignoring nan; inf only if every slice is inf."""
    arr = np.asarray(values, np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else float(arr[0])
