"""Radial power spectrum: how much energy an image keeps at each spatial frequency (FACTS 2)."""

from __future__ import annotations

import numpy as np


def radial_spectrum(image: np.ndarray, bins: int = 10) -> np.ndarray:
    """Mean log10 power per radial frequency bin of a 2D image, low to high frequency.

    P = |fftshift(fft2(image))|^2; each axis's frequency is normalised to [-1, 1) (Nyquist = 1),
    the radius r = sqrt(fy^2 + fx^2) is split into ``bins`` equal bins from 0 to max(r) (the last
    bin includes max(r)), and each value is mean(log10(P + 1e-12)) over the bin. Empty bins: nan.
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise ValueError(f"radial_spectrum needs a 2D image, got shape {a.shape}")
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(a.shape[0])) * 2.0
    fx = np.fft.fftshift(np.fft.fftfreq(a.shape[1])) * 2.0
    radius = np.hypot(fy[:, None], fx[None, :])
    edges = np.linspace(0.0, radius.max(), bins + 1)
    index = np.clip(np.digitize(radius, edges[1:-1], right=False), 0, bins - 1)
    logp = np.log10(power + 1e-12)
    sums = np.bincount(index.ravel(), weights=logp.ravel(), minlength=bins)
    counts = np.bincount(index.ravel(), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def radial_spectrum_slices(volume: np.ndarray, axis: int = 0, bins: int = 10) -> np.ndarray:
    """Radial spectrum of every 2D slice along ``axis``: array (n_slices, bins)."""
    return np.stack(
        [radial_spectrum(np.take(volume, i, axis=axis), bins) for i in range(volume.shape[axis])]
    )
