"""Radial power spectrum: how much energy an image keeps at each spatial frequency (FACTS 2)."""

from __future__ import annotations

import numpy as np


def radial_spectrum(image: np.ndarray, bins: int = 10) -> np.ndarray:
    """Mean log10 power per radial frequency bin of a 2D image, low to high frequency.

    latent-sr's ``radial_power_spectrum`` exactly: P = |fftshift(fft2(image))|^2; frequency per axis
    (index - n // 2) / n; radius sqrt(fx^2 + fy^2); ``bins`` equal bins from 0 to max(radius), a
    pixel in bin i when lo <= r < hi (the pixels at max(radius) fall in no bin); value =
    mean(log10(P + 1e-12)). Empty bins: nan (latent-sr writes -12).
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise ValueError(f"radial_spectrum needs a 2D image, got shape {a.shape}")
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    h, w = a.shape
    fy = (np.arange(h)[:, None] - h // 2) / h
    fx = (np.arange(w)[None, :] - w // 2) / w
    radius = np.sqrt(fx**2 + fy**2)
    edges = np.linspace(0.0, radius.max(), bins + 1)
    index = np.digitize(radius, edges, right=False).ravel() - 1  # edges[i] <= r < edges[i + 1]
    inside = (index >= 0) & (index < bins)
    logp = np.log10(power + 1e-12).ravel()
    sums = np.bincount(index[inside], weights=logp[inside], minlength=bins)
    counts = np.bincount(index[inside], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def radial_spectrum_slices(volume: np.ndarray, axis: int = 0, bins: int = 10) -> np.ndarray:
    """Radial spectrum of every 2D slice along ``axis``: array (n_slices, bins)."""
    return np.stack(
        [radial_spectrum(np.take(volume, i, axis=axis), bins) for i in range(volume.shape[axis])]
    )
