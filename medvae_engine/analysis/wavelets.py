"""Wavelet subband PSNR and per-subband error maps (3-level Haar, FACTS section 2).

2D subbands: ``LL3`` and (``LH``, ``HL``, ``HH``) at levels 3, 2, 1 (level 1 finest). ``LH`` is
PyWavelets' horizontal detail (cH: low-pass along columns, high-pass along rows), ``HL`` the
vertical detail (cV), ``HH`` the diagonal detail (cD). Each subband's PSNR uses that subband's own
peak: 10 log10(max|HR coeff|^2 / MSE). 3D subbands (``wavedecn``) are named from PyWavelets'
keys with a -> L and d -> H per axis, e.g. ``LLL3``, ``LLH2``.
"""

from __future__ import annotations

import numpy as np
import pywt

from .metrics import psnr_from_mse

WAVELET = "haar"
LEVELS = 3
SUBBANDS_2D = (
    "LL3", "LH3", "HL3", "HH3", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1",
)
_DETAIL_2D = ("LH", "HL", "HH")


def _subbands_2d(image: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    coeffs = pywt.wavedec2(np.asarray(image, np.float64), WAVELET, level=levels)
    bands = {f"LL{levels}": coeffs[0]}
    for i, details in enumerate(coeffs[1:]):
        level = levels - i
        for name, c in zip(_DETAIL_2D, details, strict=True):
            bands[f"{name}{level}"] = c
    return bands


def _key_name(key: str) -> str:
    return key.replace("a", "L").replace("d", "H")


def _subbands_nd(volume: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    coeffs = pywt.wavedecn(np.asarray(volume, np.float64), WAVELET, level=levels)
    ndim = np.ndim(volume)
    bands = {"L" * ndim + str(levels): coeffs[0]}
    for i, details in enumerate(coeffs[1:]):
        level = levels - i
        for key in sorted(details):
            bands[f"{_key_name(key)}{level}"] = details[key]
    return bands


def subbands(array: np.ndarray, levels: int = LEVELS) -> dict[str, np.ndarray]:
    """Haar coefficients by subband name: 2D names as in SUBBANDS_2D, 3D as LLL3, LLH3, ..."""
    return _subbands_2d(array, levels) if np.ndim(array) == 2 else _subbands_nd(array, levels)


def subband_psnr(
    reference: np.ndarray, test: np.ndarray, levels: int = LEVELS
) -> dict[str, float]:
    """PSNR (dB) of every Haar subband of ``test`` against ``reference`` (2D: the ten FACTS names).

    Inputs are [0, 1] arrays; a 3D array gives the 3D decomposition (use `subband_psnr_slices` for
    per-slice 2D values). Identical subbands give inf; an all-zero HR subband that the test does
    not match gives -inf.
    """
    ref_bands = subbands(reference, levels)
    test_bands = subbands(test, levels)
    out = {}
    for name, ref in ref_bands.items():
        err = float(np.mean((test_bands[name] - ref) ** 2))
        out[name] = psnr_from_mse(err, float(np.max(np.abs(ref))))
    return out


def subband_psnr_slices(
    reference: np.ndarray, test: np.ndarray, axis: int = 0, levels: int = LEVELS
) -> dict[str, list[float]]:
    """2D subband PSNR on every slice of two volumes along ``axis``: name -> one value per slice."""
    per_slice = [
        subband_psnr(np.take(reference, i, axis=axis), np.take(test, i, axis=axis), levels)
        for i in range(reference.shape[axis])
    ]
    return {name: [s[name] for s in per_slice] for name in per_slice[0]}


def _error_maps_2d(reference: np.ndarray, test: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    ref = pywt.wavedec2(np.asarray(reference, np.float64), WAVELET, level=levels)
    tst = pywt.wavedec2(np.asarray(test, np.float64), WAVELET, level=levels)
    zeros = [np.zeros_like(ref[0])] + [tuple(np.zeros_like(c) for c in d) for d in ref[1:]]
    shape = np.shape(reference)
    maps = {}

    def place(coeffs: list) -> np.ndarray:
        return pywt.waverec2(coeffs, WAVELET)[: shape[0], : shape[1]]

    only = list(zeros)
    only[0] = tst[0] - ref[0]
    maps[f"LL{levels}"] = place(only)
    for i in range(1, levels + 1):
        for j, name in enumerate(_DETAIL_2D):
            only = list(zeros)
            details = list(zeros[i])
            details[j] = tst[i][j] - ref[i][j]
            only[i] = tuple(details)
            maps[f"{name}{levels - i + 1}"] = place(only)
    return maps


def _error_maps_nd(reference: np.ndarray, test: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    ref = pywt.wavedecn(np.asarray(reference, np.float64), WAVELET, level=levels)
    tst = pywt.wavedecn(np.asarray(test, np.float64), WAVELET, level=levels)
    zeros = [np.zeros_like(ref[0])] + [{k: np.zeros_like(v) for k, v in d.items()} for d in ref[1:]]
    crop = tuple(slice(0, s) for s in np.shape(reference))
    ndim = np.ndim(reference)
    only = list(zeros)
    only[0] = tst[0] - ref[0]
    maps = {"L" * ndim + str(levels): pywt.waverecn(only, WAVELET)[crop]}
    for i in range(1, levels + 1):
        for key in sorted(ref[i]):
            only = list(zeros)
            only[i] = {**zeros[i], key: tst[i][key] - ref[i][key]}
            maps[f"{_key_name(key)}{levels - i + 1}"] = pywt.waverecn(only, WAVELET)[crop]
    return maps


def subband_error_maps(
    reference: np.ndarray, test: np.ndarray, levels: int = LEVELS, axis: int | None = None
) -> dict[str, np.ndarray]:
    """Each subband's error (test - reference) placed back in image space, same shape as input.

    Each map inverts that subband's coefficient difference alone (all other coefficients zero),
    so the maps add up to ``test - reference``. For volumes, ``axis`` gives 2D maps slice by slice
    along that axis; ``axis=None`` uses the 3D decomposition.
    """
    if np.ndim(reference) == 2:
        return _error_maps_2d(reference, test, levels)
    if axis is None:
        return _error_maps_nd(reference, test, levels)
    slices = [
        _error_maps_2d(np.take(reference, i, axis=axis), np.take(test, i, axis=axis), levels)
        for i in range(reference.shape[axis])
    ]
    return {name: np.stack([s[name] for s in slices], axis=axis) for name in slices[0]}

